"""Evaluate a model on labelled cases with the inference engine; print per-label figures.

Per-label Dice and 95th-percentile Hausdorff distance (MONAI), and for 2D EM membrane maps the
pixel error and adapted Rand error (scikit-image). By default the cases are the held-out split
recorded in the model card.

Usage (repository root):
    .venv/bin/python benchmarks/eval_model.py --model hippocampus \
        --data ../shared/data/msd_hippocampus --source msd [--tta]
    .venv/bin/python benchmarks/eval_model.py --model isbi2012 \
        --data ../shared/data/isbi2012_em/train --source folder2d --em
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from medseg.metrics import scores_to_csv
from medseg.model_card import read_model_card
from medseg.models import resolve_model
from medseg.training.evaluation import evaluate_model
from medseg.training.export import export_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--source", default="msd")
    parser.add_argument("--cases", default="val", help="val, all, or comma-separated ids")
    parser.add_argument("--em", action="store_true")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--per-case", action="store_true", help="also print per-case CSV")
    parser.add_argument("--export-to", default=None,
                        help="write the evaluated model here with these figures in its card")
    parser.add_argument("--training-wall-s", type=float, default=None,
                        help="with --export-to: measured wall clock of the training process")
    parser.add_argument("--weights-dtype", choices=["float32", "float16"], default=None,
                        help="evaluate (and export) the weights stored at this precision")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source_path = resolve_model(args.model)
    card = read_model_card(source_path)
    path = source_path
    if args.weights_dtype == "float16":
        # Score exactly the weights that would ship: a half-precision copy of the model.
        scratch = tempfile.TemporaryDirectory(prefix="medseg-eval-")  # removed at exit
        path = export_model(source_path, Path(scratch.name) / source_path.name,
                            weights_dtype="float16", write_card_json=False)
    cases = args.cases if args.cases in ("val", "all") else args.cases.split(",")
    t0 = time.perf_counter()
    result = evaluate_model(path, source=args.source, path=args.data, cases=cases, em=args.em,
                            tta=args.tta, device="cpu")
    wall = time.perf_counter() - t0
    summary = result["summary"]
    print(f"model {card.name} ({source_path.name}, {path.stat().st_size / 1e6:.1f} MB"
          f"{', float16 weights' if path != source_path else ''}), tta={args.tta}, "
          f"{summary['num_cases']} case(s): {', '.join(result['cases'][:6])}"
          f"{' ...' if len(result['cases']) > 6 else ''}")
    print(f"{'label':<14}{'Dice mean':>10}{'Dice std':>10}{'HD95 mm':>10}")
    for name, m in summary["labels"].items():
        print(f"{name:<14}{m['dice_mean']:>10.4f}{m['dice_std']:>10.4f}{m['hd95_mean_mm']:>10.3f}")
    if "pixel_error" in summary:
        print(f"pixel error {summary['pixel_error']:.4f}  adapted Rand error "
              f"{summary['adapted_rand_error']:.4f}  challenge pixel error (1 - max F, "
              f"interior, thresholds 0..1 by 0.1) {summary['challenge_pixel_error']:.4f}")
    print(f"evaluation wall time {wall:.1f} s on {platform.processor() or 'cpu'} "
          f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"load {os.getloadavg()[0]:.1f})")
    if args.per_case:
        print(scores_to_csv(result["per_case"], card.label_names), end="")
    if args.export_to:
        evaluation = {
            "cases": result["cases"], "tta": args.tta, "engine": "medseg.inference.Segmenter",
            "summary": summary, "command": " ".join(sys.argv),
            "training_process_wall_s": args.training_wall_s,
        }
        out = export_model(source_path, args.export_to, evaluation=evaluation,
                           weights_dtype=args.weights_dtype)
        print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB) with this evaluation "
              "in its card")


if __name__ == "__main__":
    main()
