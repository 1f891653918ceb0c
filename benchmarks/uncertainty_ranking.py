"""Which images to correct: the K the model is least confident on, or K random ones?

``nuclei`` (fluorescence) is run on the pool of H&E images of ``benchmarks/finetune_he.py``
(its split: 16 test images in whole colour groups, never fine-tuned on; 31 in the pool), and
the pool is ranked by :func:`medseg.inference.confidence.case_confidence` through
:func:`medseg.inference.ranking.rank_images`, least confident first (what the napari *Correct
next* panel lists). ``nuclei`` is then fine-tuned on the K least confident images, and on K
random images of the pool (several seeded draws), for the same number of training steps (a
step budget, not a time budget: the machine is shared, and a time budget would hand each run
the steps the load left it), and each model is scored on the test images (pooled AP@0.5
through the engine).

Each fine-tune appends one JSON line to ``benchmarks/results/uncertainty_ranking.jsonl`` (a run
that exists is not redone) and ``uncertainty_ranking.txt`` is re-rendered (CPU named).

Usage (repository root; one thread, one fine-tune at a time):
    .venv/bin/python benchmarks/uncertainty_ranking.py run --k 3 5 --draws 3 --seeds 3 \
        --steps 150
    .venv/bin/python benchmarks/uncertainty_ranking.py render
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_he import DATA, draw, make_folder, score, split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LINES = RESULTS / "uncertainty_ranking.jsonl"
RANKING = RESULTS / "uncertainty_ranking_order.json"


def rows() -> list[dict]:
    return [json.loads(line) for line in LINES.read_text().splitlines()] if LINES.exists() \
        else []


def ranking(pool: list[str]) -> list[dict]:
    """The pool ranked by nuclei's confidence, least confident first (computed once, kept)."""
    if RANKING.exists():
        stored = json.loads(RANKING.read_text())
        if sorted(r["image"] for r in stored) == sorted(pool):
            return stored
    import torch

    from medseg.inference import Segmenter
    from medseg.inference.ranking import folder_cases, rank_images

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="rank-he-"))
    folder = make_folder(pool, work / "pool")
    t0 = time.monotonic()
    ranked = rank_images(folder_cases(folder / "images"), Segmenter.from_file("nuclei",
                                                                              device="cpu"))
    seconds = time.monotonic() - t0
    out = [{"image": r.name, "confidence": round(r.score, 4), "objects": r.objects}
           for r in ranked]
    shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    RANKING.write_text(json.dumps(out, indent=1) + "\n")
    print(f"ranked {len(out)} images in {seconds:.1f} s")
    return out


def run_one(ids: list[str], *, strategy: str, k: int, number: int, steps: int,
            minutes: float, test: list[str], seed: int = 0) -> dict:
    from medseg.training.finetune import FinetuneOptions, finetune
    from medseg.training.finetune_recipe import ITERS_PER_EPOCH
    from medseg.training.runtime import cpu_name

    work = Path(tempfile.mkdtemp(prefix="rank-ft-"))
    folder = make_folder(ids, work / "data")
    os.environ["MEDSEG_MODELS_DIR"] = str(work / "models")
    t0 = time.monotonic()
    options = FinetuneOptions(base="nuclei", data=folder, minutes=minutes,
                              export=work / "out.safetensors", seed=seed, num_threads=1,
                              overrides={"epochs": steps // ITERS_PER_EPOCH})
    result = finetune(options)
    row = {"strategy": strategy, "k": k, "draw": number, "seed": seed, "planned_steps": steps,
           "object_scale": options.object_scale,
           "minutes": minutes, "images": ids,
           "steps": result.steps, "wall_min": round((time.monotonic() - t0) / 60, 2),
           "own_before": round(result.before, 4), "own_after": round(result.after, 4),
           "improved": result.improved, "test": score(result.model_path, test),
           "cpu": cpu_name(), "load_avg_15min": round(os.getloadavg()[2], 2)}
    shutil.rmtree(work, ignore_errors=True)
    return row


def cmd_run(args: argparse.Namespace) -> None:
    pool, test, _ = split()
    ranked = [r["image"] for r in ranking(pool)]
    done = {(r["strategy"], r["k"], r["draw"], r.get("seed", 0), r["planned_steps"])
            for r in rows()}
    plan = []
    for k in args.k:  # the same images under other training seeds: the training's own spread
        plan += [("least confident", k, 0, ranked[:k], seed) for seed in range(args.seeds)]
        plan += [("random", k, n, draw(pool, k, n), 0) for n in range(args.draws)]
    for strategy, k, number, ids, seed in plan:
        if (strategy, k, number, seed, args.steps) in done:
            continue
        row = run_one(ids, strategy=strategy, k=k, number=number, steps=args.steps,
                      minutes=args.minutes, test=test, seed=seed)
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(LINES, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        render()
    render()


def _sd(values: list[float]) -> float:
    """Sample standard deviation (nan for fewer than two values)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def render() -> None:
    from medseg.training.runtime import cpu_name

    pool, test, n_groups = split()
    order = json.loads(RANKING.read_text()) if RANKING.exists() else []
    out = [
        "Correct the least confident images or random ones? benchmarks/uncertainty_ranking.py",
        f"machine: {cpu_name()}, {platform.machine()}, 2 cores shared with another training "
        "(15-minute load average per run below); torch 1 thread per run",
        f"data: {DATA.name}: test = {len(test)} images (whole colour groups of {n_groups}, "
        f"never fine-tuned on, the split of finetune_he.py); pool = {len(pool)}",
        "ranking: nuclei on every pool image, least confident first by case_confidence (the "
        "model's expected Dice between its foreground probability and its labels); random: "
        "seeded draws of the pool (finetune_he.draw)",
        "each model: nuclei fine-tuned on the K images (medseg.training.finetune, defaults, "
        "training seed 0 unless said) for a fixed number of steps (overrides epochs; the "
        "time cap is only a cap), then pooled AP@0.5 on the test images through the engine",
        "",
    ]
    if order:
        scores = [r["confidence"] for r in order]
        out.append(f"pool confidence: least {scores[0]:.3f}, median "
                   f"{float(np.median(scores)):.3f}, most {scores[-1]:.3f}; the 5 least: "
                   + ", ".join(f"{r['image'][:8]} {r['confidence']:.3f}" for r in order[:5]))
        out.append("")
    table = rows()
    for steps in sorted({r["planned_steps"] for r in table}):
        scale = any(r.get("object_scale") for r in table if r["planned_steps"] == steps)
        out.append(f"test AP@0.5 after fine-tuning for {steps} steps"
                   + (" (one object scale, the current recipe):" if scale
                      else " (native scale, the recipe before one object scale):"))
        out.append(f"{'K':>3}  {'least confident (each seed)':<27} {'mean':>6} {'sd':>5}  "
                   f"{'random (each draw)':<22} {'mean':>6} {'sd':>5}  {'difference':>10}")
        for k in sorted({r["k"] for r in table if r["planned_steps"] == steps}):
            cell = [r for r in table if r["planned_steps"] == steps and r["k"] == k]
            least = [r["test"]["ap50"] for r in sorted(cell, key=lambda r: r.get("seed", 0))
                     if r["strategy"] == "least confident"]
            rand = [r["test"]["ap50"] for r in sorted(cell, key=lambda r: r["draw"])
                    if r["strategy"] == "random"]
            least_mean = float(np.mean(least)) if least else float("nan")
            mean = float(np.mean(rand)) if rand else float("nan")
            out.append(f"{k:>3}  {', '.join(f'{v:.3f}' for v in least):<27} "
                       f"{least_mean:>6.3f} {_sd(least):>5.3f}  "
                       f"{', '.join(f'{v:.3f}' for v in rand):<22} "
                       f"{mean:>6.3f} {_sd(rand):>5.3f}  {least_mean - mean:>+10.3f}")
        out.append("")
    out += ["every run (own = the fine-tune's own held-back part of its K images, base -> "
            "fine-tuned):",
            f"{'K':>3} {'cap':>4} {'strategy':<16} {'draw':>4} {'seed':>4} {'steps':>6} "
            f"{'wall':>6} {'own':>13} {'test AP@0.5':>11}  load"]
    for r in table:
        out.append(f"{r['k']:>3} {r['minutes']:>4g} {r['strategy']:<16} {r['draw']:>4} "
                   f"{r.get('seed', 0):>4} "
                   f"{r['steps']:>6} {r['wall_min']:>5.1f}m {r['own_before']:.3f}->"
                   f"{r['own_after']:.3f} {r['test']['ap50']:>11.3f}  {r['load_avg_15min']}")
    (RESULTS / "uncertainty_ranking.txt").write_text("\n".join(out) + "\n")
    print("\n".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--k", type=int, nargs="+", default=[3, 5])
    p.add_argument("--draws", type=int, default=3, help="random draws per K")
    p.add_argument("--seeds", type=int, default=1,
                   help="training seeds of the least confident images per K")
    p.add_argument("--steps", type=int, default=150, help="training steps of each fine-tune")
    p.add_argument("--minutes", type=float, default=15.0, help="time cap of each fine-tune")
    sub.add_parser("render")
    args = parser.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    else:
        render()


if __name__ == "__main__":
    main()
