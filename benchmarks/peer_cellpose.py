"""Peer: Cellpose trained from scratch on the nuclei training split, scored as ``nuclei`` is.

Cellpose is not a medseg dependency: it runs in its own environment (``predict``), and the
label images it writes are scored here with medseg's metrics (``score``), the same way
``eval_nuclei.py`` scores medseg (pooled AP at IoU 0.5 over the card's validation images).

Set-up and training (separate environment; the split is the one in ``nuclei``'s model card)::

    python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 cellpose==3.1.1.2
    # /tmp/cpdata/train: <id>_img.tif (grey) and <id>_masks.tif, the training ids only
    OMP_NUM_THREADS=1 timeout 1800 /tmp/peer/bin/python -m cellpose --train \
        --dir /tmp/cpdata/train --pretrained_model None --chan 0 --chan2 0 \
        --img_filter _img --mask_filter _masks --n_epochs 500 --save_every 1 --verbose

Prediction (peer environment) and scoring (medseg's)::

    /tmp/peer/bin/python benchmarks/peer_cellpose.py predict --model MODEL \
        --images /tmp/cpdata/val --out /tmp/cpdata/pred
    .venv/bin/python benchmarks/peer_cellpose.py score --pred /tmp/cpdata/pred \
        --data ../shared/data/dsb2018_nuclei
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def predict(model_path: str, images: Path, out: Path, threads: int) -> None:
    """Run a trained Cellpose model over ``images/<id>_img.tif``; write ``out/<id>.tif``."""
    import tifffile
    import torch
    from cellpose import models

    torch.set_num_threads(threads)
    model = models.CellposeModel(gpu=False, pretrained_model=model_path)
    diameter = float(model.diam_labels)  # the training labels' mean diameter (no size model)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(images.glob("*_img.tif"))
    t0 = time.perf_counter()
    for f in files:
        masks, _, _ = model.eval(tifffile.imread(f), channels=[0, 0], diameter=diameter)
        tifffile.imwrite(out / f"{f.name[:-len('_img.tif')]}.tif", masks.astype("uint16"))
    wall = time.perf_counter() - t0
    print(f"cellpose {model_path}: {len(files)} images, diameter {diameter:.1f}, "
          f"{wall:.1f} s ({len(files) / wall:.2f} images/s, {threads} threads)")


def score(pred: Path, data: Path) -> None:
    """Pooled AP@0.5 / DSB of ``pred/<id>.tif`` against the masks, by ``eval_nuclei.py``'s
    scoring (medseg environment)."""
    from eval_nuclei import score_folder  # a sibling script: benchmarks/ is sys.path[0]

    ids = sorted(f.stem for f in pred.glob("*.tif"))
    s, _ = score_folder(pred, data, ids)
    print(f"{len(ids)} images | AP@0.5 pooled {s['ap50_pooled']:.4f} | DSB score pooled "
          f"{s['dsb_score_pooled']:.4f} | AP@0.5 mean per image {s['ap50_mean_per_image']:.4f} | "
          f"F1@0.5 pooled {s['f1_50_pooled']:.4f} | pixel Dice {s['pixel_dice_mean']:.4f} | "
          f"objects {s['n_pred']}/{s['n_true']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="run Cellpose (its own environment)")
    p.add_argument("--model", required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("score", help="score the label images with medseg's metrics")
    s.add_argument("--pred", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "predict":
        predict(args.model, args.images, args.out, args.threads)
    else:
        score(args.pred, args.data)


if __name__ == "__main__":
    main()
