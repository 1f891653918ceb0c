"""Are a nuclei model's objects the size of the annotated ones?

For every annotated nucleus of the chosen images, the predicted object that covers most of it
(IoU >= 0.3) gives an area ratio predicted / true, summarised per size class; then the pooled
AP@0.5 and DSB score of the model as shipped, and with every object grown or shrunk by 1 px.
Choose on training images (``--split train --every 5``), never on the validation images.

Usage (repository root):
    .venv/bin/python benchmarks/nuclei_size_calibration.py --model nuclei \
        --data ../shared/data/dsb2018_nuclei --split train --every 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from medseg.inference import Segmenter
from medseg.io import read_image
from medseg.metrics import pooled_scores
from medseg.training.runtime import cpu_name

BINS = (0, 100, 200, 400, 1000, np.inf)


def shrink(labels: np.ndarray, pixels: int) -> np.ndarray:
    """Each object minus its outer ``pixels`` rings (3x3 neighbourhood)."""
    out = labels.copy()
    for _ in range(pixels):
        edge = (ndi.grey_erosion(out, size=3) != out) | (ndi.grey_dilation(out, size=3) != out)
        out = np.where(edge, 0, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seg = Segmenter.from_file(args.model)
    ids = sorted(seg.card.training["split"][args.split])[::args.every]
    data = Path(args.data)
    pairs = []
    for i in ids:
        labels = np.asarray(seg.predict(read_image(data / "images" / f"{i}.png")).labels.array)[0]
        truth = np.asarray(Image.open(data / "masks" / f"{i}.png")).T  # medseg 2D: (x, y)
        pairs.append((truth, labels))
    print(f"# {args.model} on {len(ids)} {args.split} images (every {args.every}); "
          f"cpu {cpu_name()}")
    ratios: dict[float, list[float]] = {lo: [] for lo in BINS[:-1]}
    for truth, labels in pairs:
        objects = ndi.find_objects(truth)
        for t, box in enumerate(objects, start=1):
            if box is None:
                continue
            true = truth[box] == t
            ids_, counts = np.unique(labels[box][true], return_counts=True)
            if not (ids_ > 0).any():
                continue
            p = ids_[ids_ > 0][counts[ids_ > 0].argmax()]
            pred = labels == p
            whole_true = truth == t
            iou = (pred & whole_true).sum() / (pred | whole_true).sum()
            if iou >= 0.3:
                area = int(true.sum())
                lo = max(b for b in BINS[:-1] if b <= area)
                ratios[lo].append(pred.sum() / area)
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        r = np.asarray(ratios[lo])
        print(f"true area {lo:g}-{hi:g} px: {len(r)} matched, median predicted / true area "
              f"{np.median(r) if len(r) else float('nan'):.3f}")
    for name, change in (("as shipped", lambda x: x), ("grown 1 px", lambda x: expand_labels(x, 1)),
                         ("shrunk 1 px", lambda x: shrink(x, 1))):
        s = pooled_scores([(t, change(p)) for t, p in pairs])
        print(f"{name}: AP@0.5 pooled {s['ap50_pooled']:.4f}, "
              f"DSB pooled {s['dsb_score_pooled']:.4f}")


if __name__ == "__main__":
    main()
