"""Evaluate a trained model on a labelled dataset (any training source layout).

The model runs through the same engine users run (:class:`medseg.inference.Segmenter`), on the
images as read from disk, and predictions are scored on the label's own grid, so the figures are
what a user of the model would get.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import DatasetError
from medseg.metrics import CaseScores, score_case, summarize
from medseg.metrics.instance import instance_row, instance_scores, pooled_scores
from medseg.training.dataset import load_raw_case
from medseg.training.sources import index_dataset

if TYPE_CHECKING:
    from medseg.inference.options import InferenceOptions

logger = logging.getLogger(__name__)


def evaluate_model(
    model: str | Path,
    *,
    source: str,
    path: str | Path,
    cases: Sequence[str] | str = "val",
    image_dir: str = "image",
    label_dir: str = "label",
    label_values: dict[int, int] | None = None,
    em: bool = False,
    device: str | None = None,
    tta: bool = False,
    amp: bool | None = None,
    save_predictions: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    inference: InferenceOptions | None = None,
) -> dict[str, Any]:
    """Run ``model`` (shipped name or file) on dataset cases and score them.

    Args:
        model: Shipped model name or ``.safetensors`` path.
        source: Dataset layout (``msd``, ``dicom``, ``folder2d``, ``manifest``).
        path: Dataset root (or manifest file).
        cases: ``"val"`` (the held-out cases recorded in the model card), ``"all"``, or ids.
        image_dir: ``folder2d`` image sub-folder.
        label_dir: ``folder2d`` label sub-folder.
        label_values: Raw label value -> class mapping (``None``: the card's training mapping).
        em: Also compute pixel errors and adapted Rand error (binary 2D membrane maps); the
            challenge pixel error thresholds the predicted membrane probability.
        device: ``None`` picks CUDA when present.
        tta: Mirror test-time augmentation.
        amp: Autocast (``None``: the engine's default).
        save_predictions: Folder to write predicted label maps to (NIfTI or PNG).
        progress: ``progress(done, total)`` per case.
        inference: Inference options (a ``device``, ``amp`` or ``tta=True`` given here
            overrides theirs).

    Returns:
        ``{"model", "cases", "summary", "per_case", "seconds", "instances"}``. For an instance
        model (its card has ``instances``) the label maps are read as object ids and scored
        as objects: ``summary`` is :func:`medseg.metrics.pooled_scores` (AP@0.5 pooled and
        per image, DSB score, F1, pixel Dice) and ``per_case`` one dict per case (case id,
        objects, AP@0.5, DSB score, F1@0.5, pixel Dice); ``instances`` is then ``True``.
    """
    from medseg.inference import Segmenter
    from medseg.inference.options import merge_options

    given = {"device": device, "amp": amp, "tta": tta or None}
    options = merge_options(inference, **{k: v for k, v in given.items() if v is not None})
    segmenter = Segmenter.from_file(model, options)
    card = segmenter.card
    index = index_dataset(source, path, image_dir=image_dir, label_dir=label_dir)
    by_id = {p.case_id: p for p in index.pairs}
    if cases == "val":
        wanted = list(card.training.get("split", {}).get("val", []))
        if not wanted:
            raise DatasetError(f"model {model}: its card records no validation split; "
                               "name the cases or use cases='all'")
    elif cases == "all":
        wanted = list(by_id)
    else:
        wanted = list(cases)
    missing = [c for c in wanted if c not in by_id]
    if missing:
        raise DatasetError(f"case {missing[0]}: not in the dataset at {path} "
                           f"({len(missing)} missing)")
    if label_values is None:
        mapping = card.training.get("config", {}).get("data", {}).get("label_values")
        label_values = {int(k): int(v) for k, v in mapping.items()} if mapping else None
    labels = [k for k in sorted(card.label_names) if k != 0]
    instances = bool(card.instances)
    scores: list[CaseScores] = []
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, case_id in enumerate(wanted):
        # an instance model's labels are object ids 1..N, not its classes
        raw = load_raw_case(by_id[case_id], label_values=label_values,
                            num_classes=None if instances else len(card.label_names))
        result = segmenter.predict(raw.image, return_probabilities=em)
        if instances:
            truth, pred = raw.label.array[0], result.labels.array[0]
            pairs.append((truth, pred))
            rows.append(instance_row(case_id, instance_scores(truth, pred)))
            if save_predictions is not None:
                _save_prediction(result.labels, Path(save_predictions), case_id,
                                 instances=True)
            if progress is not None:
                progress(i + 1, len(wanted))
            continue
        prediction = result.labels
        membrane = None
        if em and result.probabilities is not None:
            # Binary membrane maps: anything not background is membrane.
            membrane = 1.0 - result.probabilities.array[0].astype(np.float32)
        scores.append(score_case(case_id, prediction, raw.label, labels=labels, em=em,
                                 membrane_probability=membrane))
        if save_predictions is not None:
            _save_prediction(prediction, Path(save_predictions), case_id)
        if progress is not None:
            progress(i + 1, len(wanted))
    seconds = time.perf_counter() - t0
    return {
        "model": card.name,
        "cases": wanted,
        "summary": pooled_scores(pairs) if instances else summarize(scores, card.label_names),
        "per_case": rows if instances else scores,
        "seconds": round(seconds, 1),
        "instances": instances,
    }


def _save_prediction(prediction: Any, folder: Path, case_id: str, *,
                     instances: bool = False) -> None:
    from medseg.io import write_nifti

    folder.mkdir(parents=True, exist_ok=True)
    if prediction.meta.ndim == 2 and instances:
        from medseg.io.image2d import write_label_image_2d

        write_label_image_2d(prediction, folder / f"{case_id}.tif")  # ids kept (uint16/32)
    elif prediction.meta.ndim == 2:
        from PIL import Image

        from medseg.io.atomic import atomic_path

        with atomic_path(folder / f"{case_id}.png") as tmp:
            # (i=cols, j=rows) -> image rows; membrane (1) saved as 255 for viewing.
            Image.fromarray((prediction.array[0].T * 255).astype("uint8")).save(tmp, format="PNG")
    else:
        write_nifti(prediction, folder / f"{case_id}.nii.gz")
