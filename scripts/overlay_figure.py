"""Render a predicted mask over its image as a PNG montage (for docs/images), no GUI needed.

Reads the image (DICOM folder, NIfTI, ...) and the label map with medseg's readers, checks that
they share one grid, and draws the label outlines on the slices that hold the most label
(or evenly spaced slices when it is empty), in the usual radiological display: rows down,
columns across, as a DICOM viewer shows the stored pixels.

Usage (repository root):
    .venv/bin/python scripts/overlay_figure.py IMAGE LABELS OUT.png [--slices 6] [--title T]
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medseg.io import read_image

COLOURS = [(255, 60, 60), (60, 200, 255), (255, 220, 0), (120, 255, 120)]


def montage(image: np.ndarray, labels: np.ndarray, slices: list[int], *, title: str = "",
            scale: int = 1) -> Image.Image:
    """``image``/``labels`` in medseg order ``(x, y, k)``: one panel per slice, side by side."""
    lo, hi = np.percentile(image, [1, 99.5])
    panels = []
    for k in slices:
        grey = np.clip((image[..., k].T - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
        lab = labels[..., k].T
        for i, value in enumerate(v for v in np.unique(lab) if v):
            region = lab == value
            edge = region & ~ndimage.binary_erosion(region)
            rgb[edge] = COLOURS[i % len(COLOURS)]
        panel = Image.fromarray(rgb)
        if scale != 1:
            panel = panel.resize((panel.width * scale, panel.height * scale), Image.NEAREST)
        ImageDraw.Draw(panel).text((6, 4), f"slice {k + 1}", fill=(255, 255, 0))
        panels.append(panel)
    width = sum(p.width for p in panels)
    out = Image.new("RGB", (width, panels[0].height + 22), (0, 0, 0))
    x = 0
    for p in panels:
        out.paste(p, (x, 22))
        x += p.width
    ImageDraw.Draw(out).text((6, 5), title, fill=(255, 255, 255))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("labels")
    parser.add_argument("out")
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--title", default="")
    parser.add_argument("--downscale", type=int, default=1, help="show every n-th pixel")
    args = parser.parse_args()
    image, labels = read_image(args.image), read_image(args.labels)
    if not image.meta.same_grid(labels.meta, atol_mm=1e-3):
        raise SystemExit("the labels are not on the image's grid")
    img, lab = np.asarray(image.array[0], np.float32), np.asarray(labels.array[0])
    if args.downscale > 1:
        d = args.downscale
        img, lab = img[::d, ::d], lab[::d, ::d]
    per_slice = (lab > 0).sum(axis=(0, 1))
    n = min(args.slices, lab.shape[2])
    if per_slice.any():
        chosen = sorted(np.argsort(-per_slice, kind="stable")[:n].tolist())
    else:
        chosen = np.linspace(0, lab.shape[2] - 1, n).round().astype(int).tolist()
    montage(img, lab, chosen, title=args.title).save(args.out, optimize=True)
    print(f"wrote {args.out}: slices {[k + 1 for k in chosen]}")


if __name__ == "__main__":
    main()
