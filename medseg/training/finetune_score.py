"""Score a model on held-back cases the way its users will see it: through the inference engine
(its channel rule, windows and instance post-processing), AP@0.5 for an instance model's
objects, mean Dice over the foreground classes for a class model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

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
                cancel: Callable[[], bool] | None = None) -> float:
    """:func:`metric_name`'s figure of ``model`` on ``cases`` (read one at a time).

    Instance models: TP / (TP + FP + FN) at IoU 0.5, counts pooled over the cases. Class
    models: per case, the mean Dice of the foreground classes present in the mask or the
    prediction, averaged over the cases.
    """
    from medseg.inference import Segmenter
    from medseg.metrics import pooled_scores

    segmenter = Segmenter.from_file(model, device=device)
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
