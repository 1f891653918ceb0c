"""Per-case time of batch inference on MSD Hippocampus, against nnU-Net's on this machine.

Reference (measured on this machine with ``nnUNetv2_predict`` on CPU, as reported with the
inference-speed target): 1.97 s per case with test-time mirroring, 0.52 s without. The target is
at most half.

Every case goes through the real batch pipeline (:func:`medseg.inference.batch.run_batch`:
read the NIfTI, z-score, windowed forward pass, write the label NIfTI and the JSON record), on
the first ``--cases`` volumes of ``../shared/data/msd_hippocampus/imagesTr`` (sorted). The model
loads once per variant, outside the timing. Variants: precision (``bf16`` = autocast as the
engine picks by default on this CPU, ``fp32``) x TTA (8 mirrorings) off/on.

With ``--model`` a trained model is used, the cases are those of its card's validation split,
and per-label Dice against ``labelsTr`` is printed,
with the voxel agreement of bf16 and fp32 labels (the accuracy case for bf16 by default);
without it, a random-weight DynUNet with the hippocampus workflow's plan (window 40x56x40,
filters 16..128, deep supervision heads unused at inference) stands in, so only times count.

Usage (repository root)::

    .venv/bin/python benchmarks/bench_inference_hippocampus.py --cases 40 \
        [--model runs/hippocampus/best.safetensors] \
        | tee benchmarks/results/inference_hippocampus.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_distributed import hippocampus_like_model  # the workflow's plan, random weights
from bench_inference import cpu_name

from medseg.inference import Segmenter
from medseg.inference.batch import run_batch
from medseg.io import read_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msd_hippocampus"
NNUNET_S = {False: 0.52, True: 1.97}  # per case, without / with mirroring (the reported reference)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--model", type=Path, help="trained model (default: random weights)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on the shared 2-core machine a second "
                             "thread waiting on a busy core costs more than it gains)")
    parser.add_argument("--variants", nargs="+", default=["bf16", "bf16+tta", "fp32",
                                                          "fp32+tta"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted((DATA / "imagesTr").glob("*.nii.gz"))
    held_out = []
    if args.model:  # score only cases the model did not train on
        from medseg.model_card import read_model_card

        val = set(read_model_card(args.model).training.get("split", {}).get("val", []))
        held_out = [f for f in files if f.name[: -len(".nii.gz")] in val]
    files = (held_out or files)[: args.cases]
    print(f"# {__doc__.splitlines()[0]}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    which = "the model card's validation split" if held_out else "the first, sorted"
    print(f"# {len(files)} cases ({which}) from {DATA / 'imagesTr'}; torch threads "
          f"{args.threads}; "
          f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-hippo-") as tmp:
        model = args.model or hippocampus_like_model(Path(tmp) / "hippocampus-random.safetensors")
        from medseg.model_card import file_sha256, read_model_card

        card = read_model_card(model)
        evaluation = card.training.get("evaluation", {}).get("summary", {}).get("labels", {})
        card_dice = ({k: round(v["dice_mean"], 4) for k, v in evaluation.items()} if evaluation
                else card.training.get("best", {}).get("val_dice", "n/a"))
        print(f"# model: {model} ({'trained' if args.model else 'RANDOM weights'}; card "
              f"{card.name!r}, filters {card.network.filters}, window {card.roi_size}, "
              f"held-out Dice in card {card_dice}, weights sha256 {file_sha256(model)[:16]})")
        print(f"{'variant':10s} {'s/case':>7s} {'median':>7s} {'infer med':>9s} "
              f"{'nnU-Net':>7s} {'ratio':>6s}  dice(anterior, posterior)")
        labels: dict[str, dict[str, np.ndarray]] = {}
        for variant in args.variants:
            tta = variant.endswith("+tta")
            amp = None if variant.startswith("bf16") else False
            segmenter = Segmenter.from_file(model, device="cpu", tta=tta, amp=amp)
            out = Path(tmp) / variant
            start = time.perf_counter()
            summary = run_batch(files, model, out, segmenter=segmenter)
            wall = time.perf_counter() - start
            if not summary.ok:
                raise SystemExit(f"{variant}: cases failed: {summary.failed}")
            totals = [r.timings_s["total"] for r in summary.records]
            infer = [r.timings_s["infer"] for r in summary.records]
            per_case = wall / len(files)
            labels[variant] = {f.name: read_image(out / f"{f.name[:-7]}.nii.gz").array[0]
                               for f in files}
            scores = ""
            if args.model:
                d = np.array([[dice(labels[variant][f.name] == v, truth == v) for v in (1, 2)]
                              for f in files
                              for truth in [read_image(DATA / "labelsTr" / f.name).array[0]]])
                scores = f" {d[:, 0].mean():.4f}, {d[:, 1].mean():.4f}"
            print(f"{variant:10s} {per_case:7.3f} {statistics.median(totals):7.3f} "
                  f"{statistics.median(infer):9.3f} {NNUNET_S[tta]:7.2f} "
                  f"{per_case / NNUNET_S[tta]:6.2f} {scores}", flush=True)
        for a, b in (("bf16", "fp32"), ("bf16+tta", "fp32+tta")):
            if a in labels and b in labels:
                agree = np.mean([(labels[a][k] == labels[b][k]).mean() for k in labels[a]])
                print(f"# voxel agreement {a} vs {b}: {agree * 100:.3f}%")
    print("# s/case = wall time of run_batch / cases (read + predict + write NIfTI + record; "
          "model loaded before); median/infer med = per-case stage timings from the records; "
          "ratio = s/case / nnU-Net's")
    print(f"# load average after: {os.getloadavg()[0]:.1f}; cpu: {cpu_name()}")


if __name__ == "__main__":
    main()
