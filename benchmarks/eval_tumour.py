"""Score a brain-tumour model the way the held-back LGG patients will be judged.

Each validation patient (by default the held-out split in the model card) is built into one
NIfTI volume exactly as the held-back patients are (SOURCE.txt): the FLAIR channel of its
slices stacked in slice order, uint8, array axes (TIFF row, TIFF column, slice), identity
affine; all volumes go through one ``medseg-predict -m MODEL`` call, and Dice is computed per
patient on the whole volume. A multi-channel model (the 3-channel comparison) is given the
same volumes with all three channels through the Python API (``Segmenter.predict``), since
the held-back NIfTI files hold FLAIR only. Also: false-positive slices (tumour predicted on a
slice whose mask is empty) and the record's per-stage timings.

Usage (repository root):
    .venv/bin/python benchmarks/eval_tumour.py --model brain-flair-tumour \
        --data ../shared/data/lgg_flair [--tta] [--patients unseen]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from predict_runs import add_predict_options, run_predict

from medseg.model_card import read_model_card
from medseg.models import resolve_model
from medseg.training.runtime import cpu_name


def patient_volume(folder: Path, channel: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) stacked as the held-back NIfTI files are (``channel=None``: all three
    channels, ``(row, column, slice, channel)``)."""
    n = len([f for f in folder.glob("*.tif") if not f.name.endswith("_mask.tif")])
    name = folder.name
    pick = slice(None) if channel is None else channel
    vol = np.stack([tifffile.imread(folder / f"{name}_{k}.tif")[:, :, pick]
                    for k in range(1, n + 1)], axis=2)
    mask = np.stack([tifffile.imread(folder / f"{name}_{k}_mask.tif") > 0
                     for k in range(1, n + 1)], axis=-1)
    return vol, mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2.0 * (a & b).sum() / denom)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_predict_options(parser)
    parser.add_argument("--data", required=True, help="lgg_flair folder")
    parser.add_argument("--patients", default="val",
                        help="val (the card's split), unseen (every patient of --data and of "
                        "lgg_flair_more beside it that the model was not trained on) or ids,...")
    args = parser.parse_args()
    path = resolve_model(args.model)
    card = read_model_card(path)
    more = Path(args.data).parent / "lgg_flair_more"
    if args.patients == "unseen":
        trained = set(card.training.get("split", {}).get("train", []))
        everyone = sorted(d.name for d in Path(args.data).glob("TCGA_*") if d.is_dir()) + \
            sorted(f.name[:-7] for f in (more / "imagesTr").glob("*.nii.gz"))
        patients = [p for p in everyone if p not in trained]
    else:
        patients = (card.training.get("split", {}).get("val", []) if args.patients == "val"
                    else args.patients.split(","))
    work = Path(tempfile.mkdtemp(prefix="medseg-tumour-"))
    masks, inputs, preds = {}, [], {}
    multi = card.network.in_channels > 1
    for p in patients:
        if not (Path(args.data) / p).is_dir() and not multi:  # an lgg_flair_more volume
            masks[p] = np.asanyarray(nib.load(str(more / "labelsTr" / f"{p}.nii.gz")).dataobj) > 0
            f = work / f"{p}_flair.nii.gz"
            f.symlink_to((more / "imagesTr" / f"{p}.nii.gz").resolve())
            inputs.append(str(f))
            continue
        vol, mask = patient_volume(Path(args.data) / p, None if multi else 1)
        masks[p] = mask
        if multi:
            preds[p] = vol
            continue
        f = work / f"{p}_flair.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(f))
        inputs.append(str(f))
    out = work / "out"
    rc = 0
    if multi:
        import torch

        from medseg.inference import Segmenter
        from medseg.io import ImageMeta, MedImage

        torch.set_num_threads(args.threads)
        seg = Segmenter.from_file(path, tta=args.tta)
        for p, vol in preds.items():
            image = MedImage(np.ascontiguousarray(vol.transpose(3, 0, 1, 2)),
                             ImageMeta.identity(3))
            result = seg.predict(image)
            preds[p] = (result.labels.array[0] > 0, result.timings)
    else:
        rc = run_predict(args, path, out, inputs)
    print(f"model {card.name} ({path.name}), {len(patients)} patients, tta={args.tta}, "
          f"options {args.extra}, medseg-predict rc={rc}")
    print(f"machine: {cpu_name()}, {platform.machine()}")
    scores, fp_slices, empty_slices = [], 0, 0
    print("patient, slices, tumour slices, Dice, FP slices, infer s")
    for p in patients:
        if multi:
            pred, timings = preds[p]
        else:
            pred = nib.load(str(out / f"{p}_flair.nii.gz")).get_fdata() > 0
            timings = json.loads((out / f"{p}_flair.json").read_text())["timings_s"]
        truth = masks[p]
        assert pred.shape == truth.shape, (p, pred.shape, truth.shape)
        d = dice(pred, truth)
        empty = ~truth.any(axis=(0, 1))
        fp = int((pred.any(axis=(0, 1)) & empty).sum())
        fp_slices += fp
        empty_slices += int(empty.sum())
        scores.append(d)
        print(f"  {p} {truth.shape[2]} {int((~empty).sum())} {d:.4f} {fp} "
              f"{timings.get('infer', float('nan')):.2f}")
    print(f"per-patient Dice: mean {np.mean(scores):.4f}, median {np.median(scores):.4f}, "
          f"min {np.min(scores):.4f}")
    print(f"false-positive slices: {fp_slices} of {empty_slices} tumour-free slices")


if __name__ == "__main__":
    main()
