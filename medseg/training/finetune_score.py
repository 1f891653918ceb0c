"""Score a model on held-back cases the way its users will see it: through the inference engine
(its channel rule, windows and instance post-processing), AP@0.5 for an instance model's
objects, mean Dice over the foreground classes for a class model."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.training.finetune_data import read_pair
from medseg.training.sources import CasePair

logger = logging.getLogger(__name__)

AP50, DICE = "AP@0.5 (pooled)", "Dice (mean over classes)"


def metric_name(instances: bool) -> str:
    """The validation figure of a fine-tune: :data:`AP50` or :data:`DICE`."""
    return AP50 if instances else DICE


def score_model(model: str | Path, cases: Sequence[CasePair], *, instances: bool,
                device: str | None = None,
                progress: Callable[[int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None,
                object_diameter: float | str | None = None) -> float:
    """:func:`metric_name`'s figure of ``model`` on ``cases`` (read one at a time).

    Instance models: TP / (TP + FP + FN) at IoU 0.5, counts pooled over the cases. Class
    models: per case, the mean Dice of the foreground classes present in the mask or the
    prediction, averaged over the cases. ``object_diameter``: as the engine's option.
    """
    from medseg.inference import Segmenter
    from medseg.metrics import pooled_scores

    segmenter = Segmenter.from_file(model, device=device, object_diameter=object_diameter)
    labels = [k for k in segmenter.card.label_names if k != 0]

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for n, case in enumerate(cases, 1):
            if cancel is not None and cancel():
                from medseg.errors import CancelledError

                raise CancelledError("fine-tune cancelled while scoring")
            image, truth = read_pair(case)
            pred = segmenter.predict(image).labels
            yield np.asarray(truth.array[0]), np.asarray(pred.array[0])
            if progress is not None:
                progress(n, len(cases))

    if instances:
        return float(pooled_scores(pairs())["ap50_pooled"])
    scores = [_mean_dice(truth, pred, labels) for truth, pred in pairs()]
    return float(np.mean(scores)) if scores else float("nan")


def _mean_dice(truth: np.ndarray, pred: np.ndarray, labels: Sequence[int]) -> float:
    """Mean Dice over the foreground labels present in ``truth`` or ``pred`` (1.0 when
    neither holds any: nothing to find, nothing found)."""
    present = [k for k in labels if np.any(truth == k) or np.any(pred == k)]
    if not present:
        return 1.0
    dice = []
    for k in present:
        t, p = truth == k, pred == k
        dice.append(2.0 * np.count_nonzero(t & p) / (np.count_nonzero(t) + np.count_nonzero(p)))
    return float(np.mean(dice))


#: Settings tried around the card's when re-choosing an instance model's post-processing on
#: the held-back images (each key only where the card's method reads it).
SETTINGS_GRID: dict[str, tuple[Any, ...]] = {
    "seed_threshold": (0.5, 0.7), "h": (0.5, 1.0, 2.0), "min_size": (16, 32),
    "min_score": (None, 0.7, 0.85),
}
#: A re-chosen setting must beat the card's by this much (pooled AP) to be kept.
SETTINGS_MARGIN = 0.02
#: Settings are re-chosen only on at least this many held-back objects: on fewer, the best of
#: the grid is mostly luck (5 H&E images, about 45 held-back nuclei: the re-chosen settings
#: lost 0.06 AP@0.5 on other images, benchmarks/results/finetune_he.txt).
MIN_OBJECTS_TO_RECHOOSE = 150


def score_instance_settings(model: str | Path, cases: Sequence[CasePair], *,
                            spec: dict[str, Any], device: str | None = None,
                            cancel: Callable[[], bool] | None = None
                            ) -> tuple[float, dict[str, Any], float]:
    """An instance model's pooled AP@0.5 on ``cases`` with the instance settings ``spec`` (the
    base model's), and the best settings of :data:`SETTINGS_GRID` around them (with at least
    :data:`MIN_OBJECTS_TO_RECHOOSE` held-back objects): ``(AP with spec, best settings, best
    AP)``.

    The network runs once per case (probabilities kept; the cases are the few held-back
    images); each setting makes the objects from them
    (:func:`medseg.inference.instances.instances_from_classes`), as the engine does. ``spec``
    wins unless another setting beats it by :data:`SETTINGS_MARGIN`.
    """
    from medseg.errors import CancelledError
    from medseg.inference import Segmenter
    from medseg.inference.instances import instances_from_classes
    from medseg.metrics import pooled_scores

    segmenter = Segmenter.from_file(model, device=device)
    kept = []
    for case in cases:
        if cancel is not None and cancel():
            raise CancelledError("fine-tune cancelled while scoring")
        image, truth = read_pair(case)
        probs = np.asarray(segmenter.predict(image, return_probabilities=True)
                           .probabilities.array, np.float32)
        kept.append((np.asarray(truth.array[0]), probs, probs.argmax(0).astype(np.uint8)))

    def ap_of(setting: dict[str, Any]) -> float:
        return float(pooled_scores((truth, instances_from_classes(classes, probs, setting))
                                   for truth, probs, classes in kept)["ap50_pooled"])

    spec_ap = ap_of(spec)
    best, best_ap = spec, spec_ap
    objects = sum(int(np.count_nonzero(np.unique(truth))) for truth, _, _ in kept)
    if objects < MIN_OBJECTS_TO_RECHOOSE:
        logger.info("%d held-back objects: the instance settings are kept (fewer than %d)",
                    objects, MIN_OBJECTS_TO_RECHOOSE)
        return spec_ap, best, best_ap
    for variant in settings_variants(spec):
        ap = ap_of(variant)
        if ap > best_ap + (SETTINGS_MARGIN if best is spec else 0.0):
            best, best_ap = variant, ap
    return spec_ap, best, best_ap


def settings_variants(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's instance settings ``spec`` with every combination of
    :data:`SETTINGS_GRID`'s values for the keys its method reads (``h`` only with distance
    seeds; ``seed_threshold`` and ``h`` not for ``"components"``).

    Examples:
        >>> len(settings_variants({"method": "components"}))
        6
        >>> len(settings_variants({"method": "boundary", "seeds": "distance"}))
        36
    """
    method = spec.get("method", "boundary")
    keys = ["min_size", "min_score"]
    if method in ("boundary", "centre"):
        keys.append("seed_threshold")
    if method == "boundary" and spec.get("seeds") == "distance":
        keys.append("h")
    out = []
    for values in itertools.product(*(SETTINGS_GRID[k] for k in keys)):
        variant = {**spec, **dict(zip(keys, values, strict=True))}
        if variant.get("min_score") is None:
            variant.pop("min_score", None)
        out.append(variant)
    return out
