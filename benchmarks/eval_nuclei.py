"""Score a nuclei instance model the way the held-back images will be judged.

One ``medseg-predict -m MODEL -o OUT IMAGE.png ...`` call over the validation images (by
default the held-out split recorded in the model card: whole field-of-view groups), then each
``OUT/<image id>.tif`` label image is read back with tifffile and matched to its mask:
AP = TP / (TP + FP + FN) at IoU 0.5 pooled over the set (StarDist's definition), the DSB score
(mean over IoU 0.5, 0.55, ..., 0.95), F1 and pixel Dice; plus images per second after start-up
(from the run's JSON-lines events: first to last finished case).

Usage (repository root):
    .venv/bin/python benchmarks/eval_nuclei.py --model nuclei \
        --data ../shared/data/dsb2018_nuclei [--tta] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from predict_runs import add_predict_options, finished_cases, run_predict

from medseg.metrics import instance_scores, pooled_scores
from medseg.model_card import read_model_card
from medseg.models import resolve_model
from medseg.training.runtime import cpu_name


def score_folder(out: Path, data: Path, ids: list[str]
                 ) -> tuple[dict, list[tuple[str, tuple[int, ...], int, int, float, float]]]:
    """Read ``out/<id>.tif`` back with tifffile, match it to ``data/masks/<id>.png``; return
    the pooled scores and per image ``(id, shape, n_true, n_pred, AP@0.5, DSB)``."""
    pairs, rows = [], []
    for i in ids:
        truth = np.asarray(Image.open(data / "masks" / f"{i}.png"))
        pred = tifffile.imread(out / f"{i}.tif")
        assert pred.shape == truth.shape, (i, pred.shape, truth.shape)
        pairs.append((truth, pred))
        s = instance_scores(truth, pred)
        rows.append((i, truth.shape, s.n_true, s.n_pred, s.ap50, s.dsb_score))
    return pooled_scores(pairs), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_predict_options(parser)
    parser.add_argument("--data", required=True, help="dsb2018_nuclei folder (images/, masks/)")
    parser.add_argument("--ids", default="val", help="val (the card's split) or a file of ids")
    parser.add_argument("--keep", default=None, help="keep the predictions in this folder")
    args = parser.parse_args()
    path = resolve_model(args.model)
    card = read_model_card(path)
    ids = (card.training.get("split", {}).get("val", []) if args.ids == "val"
           else Path(args.ids).read_text().split())
    data = Path(args.data)
    images = [data / "images" / f"{i}.png" for i in ids]
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="medseg-nuclei-"))
    log = out / "events.jsonl"
    t0 = time.perf_counter()
    rc = run_predict(args, path, out, images, log=log)
    wall = time.perf_counter() - t0
    _, per_s = finished_cases(log)
    pooled, rows = score_folder(out, data, ids)
    print(f"model {card.name} ({path.name}), {len(ids)} images, tta={args.tta}, "
          f"options {args.extra}, "
          f"medseg-predict rc={rc}, wall {wall:.1f} s, threads {args.threads}")
    print(f"machine: {cpu_name()}, {platform.machine()}")
    print(f"AP@0.5 pooled {pooled['ap50_pooled']:.4f} | DSB score pooled "
          f"{pooled['dsb_score_pooled']:.4f} | AP@0.5 mean per image "
          f"{pooled['ap50_mean_per_image']:.4f} | DSB mean per image "
          f"{pooled['dsb_score_mean_per_image']:.4f} | F1@0.5 pooled {pooled['f1_50_pooled']:.4f}"
          f" | pixel Dice {pooled['pixel_dice_mean']:.4f}")
    print(f"objects: true {pooled['n_true']}, predicted {pooled['n_pred']}")
    print(f"speed: {per_s:.2f} images/s after start-up (first to last finished case)")
    print("per image: id, shape, n_true, n_pred, AP@0.5, DSB")
    for r in rows:
        print(f"  {r[0][:16]} {r[1][0]}x{r[1][1]} {r[2]} {r[3]} {r[4]:.3f} {r[5]:.3f}")


if __name__ == "__main__":
    main()
