"""2D presets: slices per second against accuracy, per model variant, side by side.

For each variant (a model name or file plus medseg-predict options):
- speed: ``medseg-predict`` over a folder of slices, slices per second after start-up (first to
  last finished case of its JSON-lines log, as ``bench_2d.py``), with the per-stage means;
- accuracy on the model's own validation slices (the split in its card), through the same
  engine: membrane Dice, pixel error, adapted Rand error;
- agreement: the fraction of validation pixels labelled as the first (reference) variant does.

Usage (repository root):
    .venv/bin/python benchmarks/bench_2d_presets.py \
        --images ../shared/data/isbi2012_em/test/image --data ../shared/data/isbi2012_em/train \
        --variant "today=isbi2012:--windows" --variant "accurate=isbi2012" \
        --variant "fast=isbi2012-fast"
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from predict_runs import finished_cases, run_predict

from medseg.inference.options import InferenceOptions
from medseg.training.evaluation import evaluate_model
from medseg.training.runtime import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder of slices to time")
    parser.add_argument("--data", required=True, help="folder2d dataset with the val split")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=MODEL[:--option,--option] (the first is the reference)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="medseg-presets-"))
    folder = work / "in"
    folder.mkdir()
    for p in sorted(Path(args.images).iterdir(), key=lambda p: (len(p.stem), p.stem))[:args.count]:
        (folder / p.name).symlink_to(p.resolve())
    print(f"machine: {cpu_name()}, {platform.machine()}; {args.threads} threads; "
          f"{args.count} slices from {args.images}; validation split of {args.data}")
    specs = [(n, *r.partition(":")[::2]) for n, _, r in (v.partition("=") for v in args.variant)]
    wn, wm, wo = (max(len(w) for w in col) + 2 for col in zip(*specs, strict=True))
    wo = max(wo, 9)
    print(f"{'variant':<{wn}}{'model':<{wm}}{'options':<{wo}}{'slices/s':>9}{'infer s':>9}"
          f"{'Dice':>8}{'pix err':>9}{'Rand err':>9}{'agree':>8}")
    reference: dict[str, np.ndarray] = {}
    for name, model, flags in specs:
        extra = [f for f in flags.split(",") if f]
        log = work / f"{name}.jsonl"
        run = argparse.Namespace(threads=args.threads, tta=False, extra=extra)
        rc = run_predict(run, model, work / f"out-{name}", [folder], log=log)
        done, per_s = finished_cases(log)
        infer = float(np.mean([e["timings_s"]["infer"] for e in done])) if done else float("nan")
        whole = None if "--windows" not in extra else False
        saved = work / f"val-{name}"
        result = evaluate_model(model, source="folder2d", path=args.data, em=True,
                                device="cpu", save_predictions=saved,
                                inference=InferenceOptions(whole_image=whole))
        labels = {p.stem: np.asarray(Image.open(p)) for p in sorted(saved.glob("*.png"))}
        if not reference:
            reference = labels
        agree = np.mean([(labels[k] == reference[k]).mean() for k in reference])
        s = result["summary"]
        dice = next(iter(s["labels"].values()))["dice_mean"]
        print(f"{name:<{wn}}{model:<{wm}}{' '.join(extra) or '-':<{wo}}{per_s:>9.2f}{infer:>9.3f}"
              f"{dice:>8.4f}{s['pixel_error']:>9.4f}{s['adapted_rand_error']:>9.4f}"
              f"{agree:>8.4f}" + ("" if rc == 0 else f"  (medseg-predict exit {rc})"))


if __name__ == "__main__":
    main()
