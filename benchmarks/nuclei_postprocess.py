"""Instance post-processing variants of a nuclei model, scored on its validation images.

The network runs once per image (probabilities kept); each variant (``VARIANTS``, or
``CENTRE_VARIANTS`` for a model of the ``"centre"`` method) of
:func:`medseg.inference.instances.instances_from_classes` (seed rule, smallest object) is then
scored by pooled AP at IoU 0.5 and the DSB score, on the card's validation images or (``--split
train --every 5``) on every fifth training image, where settings can be chosen without looking
at the validation images.

Usage (repository root):
    .venv/bin/python benchmarks/nuclei_postprocess.py --model runs/nuclei/last.safetensors \
        --data ../shared/data/dsb2018_nuclei --threads 2 [--split train --every 5]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medseg.inference import Segmenter
from medseg.inference.instances import instances_from_classes
from medseg.io import read_image
from medseg.metrics import pooled_scores
from medseg.model_card import ModelCard

VARIANTS = [
    {"method": "boundary", "min_size": 8},
    {"method": "boundary", "min_size": 16},
    {"method": "boundary", "min_size": 32},
    {"method": "boundary", "min_size": 16, "seed_threshold": 0.6},
    {"method": "boundary", "min_size": 16, "seed_threshold": 0.7},
    {"method": "boundary", "min_size": 16, "foreground_threshold": 0.4},
    {"method": "boundary", "min_size": 32, "seed_threshold": 0.7},  # shipped until 2026-12-01
    # seeds from the h-maxima of the interior's smoothed distance map
    *({"method": "boundary", "seeds": "distance", "seed_threshold": t, "h": h, "sigma": g,
       "min_size": m}
      for h, t, m, g in [(0.5, 0.5, 32, 1.0), (1.0, 0.5, 32, 1.0), (1.5, 0.5, 32, 1.0),
                         (2.0, 0.5, 32, 1.0), (1.0, 0.7, 32, 1.0), (0.5, 0.7, 32, 1.0),
                         (1.0, 0.5, 16, 1.0), (1.0, 0.5, 32, 2.0)]),
    # distance seeds (h 0.5) with objects kept near their interior and/or weak objects dropped
    *({"method": "boundary", "seeds": "distance", "seed_threshold": 0.5, "h": 0.5, "sigma": 1.0,
       "min_size": 32, **extra}
      for extra in [{"max_grow": 2}, {"max_grow": 3}, {"min_score": 0.8}, {"min_score": 0.85},
                    {"min_score": 0.9}, {"max_grow": 3, "min_score": 0.85},
                    {"max_grow": 2, "min_score": 0.9}]),
    # seed threshold 0.7 (the best of the above for the 8-64 network, 2026-12-01) with the two
    # object filters above (min_score, max_grow)
    *({"method": "boundary", "seeds": "distance", "seed_threshold": 0.7, "h": 0.5, "sigma": 1.0,
       "min_size": 32, **extra}
      for extra in [{"min_score": 0.8}, {"min_score": 0.85}, {"max_grow": 3},
                    {"max_grow": 3, "min_score": 0.85}]),
]

#: Variants for a ``"centre"`` model (data.instance_targets: centre; 4 classes): centre
#: threshold, interior threshold, and the object filters of the boundary variants above.
CENTRE_VARIANTS = [
    {"method": "centre"},  # what a trained run's card does (argmax classes, min_size 8)
    *({"method": "centre", "centre_threshold": c, "seed_threshold": t, "min_size": m}
      for c, t, m in [(0.5, 0.5, 8), (0.5, 0.5, 32), (0.3, 0.5, 32), (0.7, 0.5, 32),
                      (0.5, 0.7, 32), (0.5, 0.6, 32), (0.5, 0.4, 32)]),
    *({"method": "centre", "centre_threshold": 0.5, "seed_threshold": 0.5, "min_size": 32,
       **extra}
      for extra in [{"max_grow": 3}, {"min_score": 0.85}, {"max_grow": 3, "min_score": 0.85},
                    {"max_grow": 2, "min_score": 0.9}]),
    # higher centre thresholds (0.7 was the best of the above on the training images)
    *({"method": "centre", "centre_threshold": c, "seed_threshold": 0.5, "min_size": 32,
       **extra}
      for c in (0.7, 0.8, 0.9) for extra in [{}, {"max_grow": 3, "min_score": 0.85}]),
]


def add_split_options(parser: argparse.ArgumentParser, *, model: str | None = None,
                      split: str = "val") -> None:
    """The options every nuclei benchmark takes: ``--model`` (required unless ``model`` is
    its default), ``--data``, ``--split``, ``--every``, ``--threads``."""
    if model is None:
        parser.add_argument("--model", required=True)
    else:
        parser.add_argument("--model", default=model)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", choices=("val", "train"), default=split)
    parser.add_argument("--every", type=int, default=1, help="every n-th image (sorted ids)")
    parser.add_argument("--threads", type=int, default=2)


def split_ids(card: ModelCard, args: argparse.Namespace) -> list[str]:
    """Every ``--every``-th image id (sorted) of the card's ``--split``."""
    return sorted(card.training["split"][args.split])[::args.every]


def score_line(s: dict) -> str:
    """One line of pooled scores (``medseg.metrics.pooled_scores``), as the nuclei
    benchmarks print them."""
    return (f"AP@0.5 pooled {s['ap50_pooled']:.4f}, DSB pooled {s['dsb_score_pooled']:.4f}, "
            f"AP@0.5 mean/img {s['ap50_mean_per_image']:.4f}, "
            f"objects {s['n_pred']}/{s['n_true']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_options(parser)
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seg = Segmenter.from_file(args.model, tta=args.tta)
    ids = split_ids(seg.card, args)
    results = []
    for i in ids:
        image = read_image(Path(args.data) / "images" / f"{i}.png")
        pred = seg.predict(image, return_probabilities=True)
        truth = np.asarray(Image.open(Path(args.data) / "masks" / f"{i}.png")).T  # (x, y)
        probs = pred.probabilities.array.astype(np.float32)
        results.append((truth, probs))
    print(f"model {args.model}, {len(ids)} {args.split} images (every {args.every}), "
          f"tta={args.tta}, "
          f"machine {platform.machine()}")
    variants = CENTRE_VARIANTS if (seg.card.instances or {}).get("method") == "centre" \
        else VARIANTS
    for spec in variants:
        pairs = []
        for truth, probs in results:
            labels = probs.argmax(0).astype(np.uint8)
            pairs.append((truth, instances_from_classes(labels, probs, spec)))
        print(f"{spec}: {score_line(pooled_scores(pairs))}")


if __name__ == "__main__":
    main()
