"""Measure how far a 2D dataset's labels sit from the image structures they mark.

Cross-correlates each label mask with the image intensities (dark structures: negated) over
all pairs, and reports the sub-pixel position of the correlation peak: the displacement ``d``
with ``label(p) ~ structure(p - d)``, in array axis order (x, y) as medseg reads 2D images.
That is the value for ``augment.label_offset`` in a training config.

Usage (repository root):
    .venv/bin/python benchmarks/label_offset.py --data ../shared/data/isbi2012_em/train \
        --foreground-value 0 --dark --exclude 20,21,22,23
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medseg.io.image2d import read_image_2d


def _parabolic_peak(m1: float, m0: float, p1: float) -> float:
    return 0.5 * (m1 - p1) / (m1 - 2 * m0 + p1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with image/ and label/")
    parser.add_argument("--foreground-value", type=int, default=1,
                        help="label pixel value of the structure (ISBI membranes: 0)")
    parser.add_argument("--dark", action="store_true", help="the structures are dark")
    parser.add_argument("--exclude", default="", help="comma-separated case ids left out "
                        "(the held-out split)")
    args = parser.parse_args()
    data = Path(args.data)
    excluded = set(filter(None, args.exclude.split(",")))
    pairs = sorted(p.name for p in (data / "image").iterdir() if p.stem not in excluded)
    acc: np.ndarray | None = None
    for name in pairs:
        image = read_image_2d(data / "image" / name).array[0].astype(np.float64)
        mask = read_image_2d(data / "label" / name).array[0] == args.foreground_value
        a = (image - image.mean()) / image.std() * (-1.0 if args.dark else 1.0)
        b = mask - mask.mean()
        corr = np.real(np.fft.ifft2(np.conj(np.fft.fft2(a)) * np.fft.fft2(b)))
        acc = corr if acc is None else acc + corr  # acc[s] = sum_p a(p) b(p + s)
    assert acc is not None
    c = np.fft.fftshift(acc)
    centre = np.array(c.shape) // 2
    win = c[centre[0] - 3: centre[0] + 4, centre[1] - 3: centre[1] + 4]
    i, j = np.unravel_index(int(np.argmax(win)), win.shape)
    if not (0 < i < 6 and 0 < j < 6):
        raise SystemExit("correlation peak more than 2 px away: labels and images do not match")
    d = (i - 3 + _parabolic_peak(win[i - 1, j], win[i, j], win[i + 1, j]),
         j - 3 + _parabolic_peak(win[i, j - 1], win[i, j], win[i, j + 1]))
    print(f"{len(pairs)} image/label pairs in {data}")
    print(f"label offset (array axes x, y): [{d[0]:.2f}, {d[1]:.2f}] px")


if __name__ == "__main__":
    main()
