"""Run a training workflow and report its wall clock and validation figures.

The whole run is timed from process start (imports and data loading included). With
``--summarize RUN_DIR`` no training runs: the figures are read from a finished run's files
(``last_state.pt``, ``metrics.csv``, ``best.safetensors``' card), e.g. for a run started with
``medseg-train`` under ``/usr/bin/time``.

Usage (repository root):
    .venv/bin/python benchmarks/train_workflow.py --config workflows/hippocampus.yaml
    .venv/bin/python benchmarks/train_workflow.py --summarize runs/hippocampus
"""

from __future__ import annotations

import argparse
import time

PROCESS_START = time.time()

import json  # noqa: E402
from pathlib import Path  # noqa: E402


def summarize(run_dir: Path, *, process_wall_s: float | None = None) -> None:
    from medseg.model_card import read_model_card
    from medseg.training.checkpoint import load_state

    state = load_state(run_dir, "last")
    card = read_model_card(run_dir / "best.safetensors")
    t = card.training
    names = {str(k): v for k, v in card.label_names.items()}
    plan = t["plan"]
    print(f"run {run_dir}: model '{card.name}', {t['dataset']['num_cases']} cases, "
          f"split {len(t['split']['train'])} train / {len(t['split']['val'])} validation "
          f"(seed {t['config']['seed']})")
    print(f"plan: patch {plan['patch_size']}, batch {plan['batch_size']}, filters "
          f"{plan['network']['filters']}, spacing {plan['target_spacing']}, normalisation "
          f"{plan['normalization']['scheme']}, optimizer {t['config']['optimizer']} "
          f"lr {t['config']['lr']} ({t['config']['lr_schedule']})")
    print(f"machine: {json.dumps(t['machine'])}")
    per_epoch = t["config"]["iters_per_epoch"]
    print(f"iterations {state['iteration']} ({state['iteration'] / per_epoch:.0f} epochs of "
          f"{per_epoch}), training loop time "
          f"{state['elapsed_s'] / 60:.1f} min (budget {t['config']['time_budget_min']} min)")
    if process_wall_s is not None:
        print(f"whole process wall clock: {process_wall_s / 60:.1f} min")
    print("validation history (sliding window, held-out cases, mean Dice per label):")
    for h in state["history"]:
        dice = "  ".join(f"{names[k]} {v:.4f}" for k, v in h["val_dice"].items())
        print(f"  it {h['iteration']:>6}  {h['elapsed_s'] / 60:6.1f} min  {dice}  "
              f"mean {h['val_mean']:.4f}")
    best = state["best"]
    dice = "  ".join(f"{names[k]} {v:.4f}" for k, v in best["val_dice"].items())
    print(f"best (kept in best.safetensors): iteration {best['iteration']}: {dice}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="workflow YAML to run")
    parser.add_argument("--summarize", help="existing run folder to report on")
    parser.add_argument("--wall-s", type=float, default=None,
                        help="with --summarize: the run's measured process wall clock (s)")
    args = parser.parse_args()
    if args.summarize:
        summarize(Path(args.summarize), process_wall_s=args.wall_s)
        return
    if not args.config:
        parser.error("give --config or --summarize")
    import logging

    from medseg.training import load_config, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = train(load_config(args.config))
    summarize(result.run_dir, process_wall_s=time.time() - PROCESS_START)


if __name__ == "__main__":
    main()
