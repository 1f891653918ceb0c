"""Where and by how much a 2D model's whole-image labels differ from its windowed ones.

For each image: the fraction of pixels whose label differs between ``--windows`` (overlapping
windows, Gaussian blend) and the whole-image pass, the mean absolute difference of the
foreground probability over all pixels, the share of differing pixels whose windowed
probability lies within 0.1 of 0.5, and the row and column profiles of the differing pixels
(in 32-pixel bins), which would peak at the window seams if the seams were the cause.

Usage (repository root):
    .venv/bin/python benchmarks/whole_vs_windows.py --model isbi2012 \
        --images ../shared/data/isbi2012_em/train/image --first 20 --count 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medseg.inference.engine import Segmenter
from medseg.io import read_image
from medseg.training.runtime import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="isbi2012")
    parser.add_argument("--images", required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first image (sorted)")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(Path(args.images).iterdir(), key=lambda p: (len(p.stem), p.stem))
    files = files[args.first:args.first + args.count]
    windows = Segmenter.from_file(args.model, whole_image=False)
    whole = Segmenter.from_file(args.model, whole_image=True)
    print(f"# {args.model} on {len(files)} images of {args.images}; cpu {cpu_name()}")
    differ_total, pixels, rows, cols = 0, 0, None, None
    for path in files:
        image = read_image(path)
        a = windows.predict(image, return_probabilities=True)
        b = whole.predict(image, return_probabilities=True)
        la, lb = np.asarray(a.labels.array)[0], np.asarray(b.labels.array)[0]
        pa = np.asarray(a.probabilities.array)[-1].astype(np.float32)
        pb = np.asarray(b.probabilities.array)[-1].astype(np.float32)
        differ = la != lb
        near = float((np.abs(pa[differ] - 0.5) < 0.1).mean()) if differ.any() else 0.0
        print(f"{path.name}: labels differ {differ.mean():.4f}, mean |dp| "
              f"{np.abs(pa - pb).mean():.4f}, differing with |p - 0.5| < 0.1: {near:.2f}")
        differ_total += int(differ.sum())
        pixels += differ.size
        r, c = differ.sum(axis=1), differ.sum(axis=0)  # medseg 2D arrays are (columns, rows)
        rows = r if rows is None else rows + r
        cols = c if cols is None else cols + c
    print(f"labels agree on {1 - differ_total / pixels:.4f} of {pixels} pixels")
    for name, profile in (("axis 0", rows), ("axis 1", cols)):
        n = len(profile) // 32 * 32
        print(f"differing pixels along {name} (32-px bins): "
              f"{profile[:n].reshape(-1, 32).sum(axis=1).tolist()}")
    norms = sorted({type(m).__name__ for m in windows.model.modules()
                    if "Norm" in type(m).__name__})
    print(f"windows: {windows.card.roi_size}, overlap {windows.overlap}; normalisation layers: "
          f"{norms}")


if __name__ == "__main__":
    main()
