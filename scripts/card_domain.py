"""Measure a shipped model's training domain and write it into its card (no retraining).

The cases are the card's own training split (``training.split.train``), read the way its
training read them (``training.config.data``); the demo model's synthetic volumes are made
again from their seeds. The weights are kept as stored (float16 stays float16).

Usage (repository root)::

    .venv/bin/python scripts/card_domain.py hippocampus isbi2012 nuclei brain-flair-tumour \
        demo-liver-lesion
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from medseg.io.atomic import atomic_write_text
from medseg.model_card import load_model, save_model
from medseg.training.config import DataConfig
from medseg.training.dataset import load_raw_cases
from medseg.training.domain import compute_domain
from medseg.training.sources import index_data

MODELS_DIR = Path(__file__).resolve().parents[1] / "medseg" / "models"
ROOT = Path(__file__).resolve().parents[1]
DATA_FIELDS = {f.name for f in dataclasses.fields(DataConfig)}

#: Intended use and limitations, as the model cards' descriptions state them.
USE = {
    "hippocampus": ("Anterior and posterior hippocampus on T1-weighted MR crops around the "
                    "hippocampus (MSD Task04, about 35x50x35 mm at 1 mm).",
                    "Not for whole-brain images: crop to the hippocampus first."),
    "isbi2012": ("Neuronal membranes in serial-section transmission EM of the Drosophila "
                 "ventral nerve cord (ISBI 2012).", "Not for light microscopy or other tissue."),
    "nuclei": ("Cell nuclei in 2D fluorescence microscopy (DSB2018-like).",
               "Not for brightfield, H&E or 3D stacks."),
    "brain-flair-tumour": ("FLAIR abnormality of lower-grade gliomas on axial brain FLAIR "
                           "MR, slice by slice.", "Research use only; training-data licence "
                           "unverified; skull not stripped."),
    "demo-liver-lesion": ("Liver and liver lesions on medseg's synthetic abdominal CT "
                          "(the demo).", "Trained on synthetic data only: not for real "
                          "patient images."),
}
# the fast presets are for what their accurate models are for
for _accurate in ("isbi2012", "nuclei", "brain-flair-tumour"):
    USE[f"{_accurate}-fast"] = USE[_accurate]


def split_cases(card, split: str = "train") -> list:  # noqa: ANN001 - ModelCard
    """The card's ``split`` cases (``"train"`` or ``"val"``), read as its training read them."""
    data = card.training["config"]["data"]
    train_ids = set(card.training["split"][split])
    if card.name == "demo-liver-lesion":
        from medseg.demo.model import TrainingRecipe, write_training_set

        folder = Path(tempfile.mkdtemp(prefix="demo-domain-")) / "dataset"
        write_training_set(folder, TrainingRecipe(), seed=0)
        path = folder
    else:
        path = (ROOT / data["path"]).resolve()
    config = DataConfig(**{**{k: v for k, v in data.items() if k in DATA_FIELDS},
                           "path": str(path)})
    config.more = [replace(m, path=str((ROOT / m.path).resolve())) for m in config.more]
    index = index_data(config)
    pairs = [p for p in index.pairs if p.case_id in train_ids]
    if len(pairs) != len(train_ids):
        raise SystemExit(f"{card.name}: found {len(pairs)} of {len(train_ids)} {split} cases")
    label_values = data.get("label_values")
    instances = data.get("instance_targets") is not None
    return load_raw_cases(
        pairs, label_values={int(k): int(v) for k, v in label_values.items()}
        if label_values else None,
        num_classes=None if instances else card.network.out_channels,
        channels=data.get("channels"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", choices=sorted(USE))
    args = parser.parse_args()
    for name in args.models:
        path = MODELS_DIR / f"{name}.safetensors"
        model, card = load_model(path)
        cases = split_cases(card)
        use, limits = USE[name]
        card.domain = compute_domain(
            cases, label_names=card.label_names, normalization=card.normalization,
            modality=card.modality or card.fingerprint.get("modality", ""),
            instances=bool(card.instances), synthetic=name == "demo-liver-lesion",
            intended_use=use, limitations=limits)
        if card.training.get("weights_dtype") == "float16":
            model = model.half()
        save_model(path, model, card)
        atomic_write_text(path.with_suffix(".json"),
                          json.dumps(card.to_dict(), indent=2, sort_keys=True))
        print(f"{name}: {len(cases)} training cases -> domain {json.dumps(card.domain)[:300]}")


if __name__ == "__main__":
    main()
