"""Seconds per slice of two tumour models on the same FLAIR volume, interleaved on one CPU.

Both models run through the engine (``Segmenter.predict``, the card's clean-up and confidence)
on one patient's FLAIR NIfTI; runs alternate A, B, A, B... so that a busy machine slows both
alike; the median of each is reported.

Usage (repository root):
    .venv/bin/python benchmarks/tumour_speed.py OLD.safetensors brain-flair-tumour [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from medseg.inference import Segmenter
from medseg.io import read_image
from medseg.training.runtime import cpu_name

VOLUME = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lgg_flair_more"
          / "imagesTr" / "TCGA_DU_5852_19950709.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = read_image(VOLUME)
    slices = image.spatial_shape[2]
    segs = [Segmenter.from_file(m) for m in args.models]
    for seg in segs:
        seg.predict(image)  # warm-up
    times: list[list[float]] = [[], []]
    for _ in range(args.reps):
        for i, seg in enumerate(segs):
            t = time.perf_counter()
            seg.predict(image)
            times[i].append(time.perf_counter() - t)
    print(f"# {VOLUME.name}: {slices} slices of {image.spatial_shape[:2]}; {cpu_name()}, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"{args.reps} interleaved runs each")
    for model, ts in zip(args.models, times, strict=True):
        med = statistics.median(ts)
        print(f"{model}: median {med:.2f} s per volume, {1000 * med / slices:.1f} ms per slice "
              f"(runs {', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
