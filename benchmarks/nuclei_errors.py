"""Where a nuclei model loses AP: every true nucleus not matched at IoU 0.5, by kind of error.

Each image runs through the engine as a user would (the card's instance settings), then every
true nucleus without a match (IoU > 0.5) is put in one class, from its overlaps with the
predicted objects:

* ``merged``: the predicted object covering most of it also covers > 30% of another nucleus;
* ``split``: two or more predicted objects each cover > 20% of it;
* ``missed``: predicted objects cover < 30% of it altogether;
* ``poor``: one object covers it, with the wrong outline (IoU <= 0.5).

``fp`` counts predicted objects matched to no nucleus. AP@0.5 = TP / (n_true + n_pred - TP).

Usage (repository root):
    .venv/bin/python benchmarks/nuclei_errors.py --model nuclei \
        --data ../shared/data/dsb2018_nuclei --split train --every 5 [--threads 2]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from nuclei_postprocess import add_split_options, split_ids
from PIL import Image

from medseg.inference import Segmenter
from medseg.io import read_image
from medseg.training.runtime import cpu_name

KINDS = ("tp", "merged", "split", "missed", "poor")


def error_kinds(truth: np.ndarray, pred: np.ndarray) -> tuple[Counter, int]:
    """Per kind (:data:`KINDS`), how many true objects of ``truth`` fall in it, and how many
    predicted objects match no true one (both maps: ids 0..N, same shape)."""
    n_true, n_pred = int(truth.max()), int(pred.max())
    both = (truth > 0) | (pred > 0)
    counts = np.zeros((n_true + 1, n_pred + 1), np.int64)
    np.add.at(counts, (truth[both].astype(np.int64), pred[both].astype(np.int64)), 1)
    true_area, pred_area = counts.sum(1), counts.sum(0)
    inter = counts[1:, 1:]
    iou = inter / np.maximum(true_area[1:, None] + pred_area[None, 1:] - inter, 1)
    kinds: Counter = Counter()
    for t in range(n_true):
        if n_pred and iou[t].max() > 0.5:
            kinds["tp"] += 1
            continue
        cover = inter[t] / max(true_area[t + 1], 1)  # share of nucleus t in each object
        if cover.sum() < 0.3:
            kinds["missed"] += 1
            continue
        holds = inter[:, cover.argmax()] / np.maximum(true_area[1:], 1) > 0.3
        if holds.sum() >= 2:
            kinds["merged"] += 1
        elif (cover > 0.2).sum() >= 2:
            kinds["split"] += 1
        else:
            kinds["poor"] += 1
    fp = int((iou.max(0) <= 0.5).sum()) if n_true else n_pred
    return kinds, fp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_options(parser, split="train")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seg = Segmenter.from_file(args.model, device="cpu")
    ids = split_ids(seg.card, args)
    total: Counter = Counter()
    fp = n_true = n_pred = 0
    for i in ids:
        pred = seg.predict(read_image(Path(args.data) / "images" / f"{i}.png")).labels.array[0]
        truth = np.asarray(Image.open(Path(args.data) / "masks" / f"{i}.png")).T  # (x, y)
        kinds, false = error_kinds(truth, pred)
        total += kinds
        fp += false
        n_true += int(truth.max())
        n_pred += int(pred.max())
    tp = total["tp"]
    print(f"model {args.model} ({seg.card.instances}), {len(ids)} {args.split} images "
          f"(every {args.every}), machine {cpu_name()}")
    print(f"true {n_true}, predicted {n_pred}, " + ", ".join(f"{k} {total[k]}" for k in KINDS)
          + f", fp {fp} | AP@0.5 pooled {tp / max(n_true + n_pred - tp, 1):.4f}")


if __name__ == "__main__":
    main()
