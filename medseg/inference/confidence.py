"""How far a result can be trusted, from what the engine already computed: a per-case score.

The default score is the model's own estimate of its overlap with the truth, the *expected
Dice* between its foreground probability ``p`` (one minus the background probability) and the
label map it returned ``y`` (a card may name another rule of :data:`SCORE_RULES`, chosen on
out-of-fold predictions)::

    score = (2 * sum(p * y) + s) / (sum(p) + sum(y) + s)

``s`` (:data:`SMOOTH_FRACTION` of the mean of the two volumes, at least :data:`SMOOTH_MIN`
voxels) keeps a confidently empty result at 1. The score falls when the probabilities are
spread over a wide, uncertain rim around the outline, when the model saw foreground that the
clean-up removed (a lesion split into pieces, keep-largest kept one) or that stayed below the
decision threshold (a lesion possibly missed). It is one number for every kind of model (a
tumour volume, a nuclei image), so the same function ranks images for correction and warns
on a batch case. A card's ``confidence.threshold`` (chosen on out-of-fold predictions, see
``benchmarks/tumour_cv.py``) turns it into a warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medseg.inference.engine import Prediction

#: Smoothing of the expected Dice, as a fraction of the mean of the soft and hard volumes.
SMOOTH_FRACTION = 0.0
#: Least smoothing, in voxels: a handful of faint voxels must not turn an empty result into a
#: confident miss.
SMOOTH_MIN = 50.0
#: Voxels per slab when summing (bounds the float32 temporaries).
_SLAB_VOXELS = 4_000_000

LOW_CONFIDENCE_MESSAGE = ("low confidence ({score:.3f}, below {threshold:.3f}): the model is "
                          "unsure of this result; review the outline of every {what} "
                          "(see docs/troubleshooting.md#low-confidence)")


@dataclass(frozen=True)
class CaseConfidence:
    """The confidence of one result.

    Attributes:
        score: Expected Dice in ``[0, 1]``; higher is more confident.
        threshold: The card's warning threshold, when it has one.
        low: ``score < threshold``.
        message: The warning to show when ``low``; ``None`` otherwise.
        features: What the score was made from: ``soft_voxels`` (sum of the foreground
            probability), ``hard_voxels`` (foreground of the label map), ``overlap``
            (sum of ``p * y``), ``uncertain_fraction`` (share of the foreground-or-probable
            voxels whose foreground probability is between 0.1 and 0.9).
    """

    score: float
    threshold: float | None = None
    low: bool = False
    message: str | None = None
    features: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "threshold": self.threshold, "low": self.low,
                "message": self.message,
                "features": {k: round(v, 4) for k, v in self.features.items()}}


def foreground_probability(probabilities: np.ndarray) -> np.ndarray:
    """``(*spatial)`` probability of any foreground class from ``(K, *spatial)``: one minus the
    background's for ``K >= 2``, the sigmoid output itself for ``K == 1``."""
    p = np.asarray(probabilities[0], dtype=np.float32)  # converts the one channel it reads
    return p if probabilities.shape[0] == 1 else 1.0 - p


def expected_dice_sums(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The sums the score is made of, slab by slab (no full-size float copy of a large
    volume).

    Args:
        probabilities: ``(K, *spatial)`` class probabilities (float16 as the engine keeps them).
        labels: ``(*spatial)`` or ``(1, *spatial)`` label map; any non-zero value is foreground.
    """
    labels = np.asarray(labels)
    if labels.ndim == probabilities.ndim:
        labels = labels[0]
    if labels.shape != probabilities.shape[1:]:
        raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape[1:]} "
                         "differ in shape")
    if probabilities.ndim >= 3 and probabilities.strides[-1] > max(probabilities.strides[1:-1]):
        # slice-major memory (the engine's 2D-over-volume buffer): read it in its own order,
        # slices first (the sums do not depend on the order)
        probabilities = np.moveaxis(probabilities, -1, 1)
        labels = np.moveaxis(labels, -1, 0)
    per_slab = max(1, labels.size // max(labels.shape[0], 1))
    step = max(1, _SLAB_VOXELS // per_slab)
    sums = dict.fromkeys(("soft_voxels", "hard_voxels", "overlap", "uncertain", "region"), 0.0)
    for z in range(0, labels.shape[0], step):  # slabs along the first spatial axis
        p = foreground_probability(probabilities[:, z:z + step])
        y = labels[z:z + step] != 0
        sums["soft_voxels"] += float(p.sum(dtype=np.float64))
        sums["hard_voxels"] += float(np.count_nonzero(y))
        sums["overlap"] += float(np.sum(p, where=y, dtype=np.float64))
        region = y | (p >= 0.1)
        sums["region"] += float(region.sum())
        sums["uncertain"] += float(((p >= 0.1) & (p <= 0.9)).sum())
    return sums


def _smoothed(numerator: float, denominator: float, f: dict[str, float]) -> float:
    s = max(SMOOTH_MIN, SMOOTH_FRACTION * 0.5 * (f["soft_voxels"] + f["hard_voxels"]))
    return (numerator + s) / (denominator + s)


#: The scores a card can name (``confidence.score``), each from the same sums; all in
#: ``[0, 1]``, higher is more confident, smoothed so that an empty, certain result scores 1.
#: ``expected_dice``: the model's expected Dice of its own result (the default);
#: ``inside_probability``: the mean foreground probability inside the result (how sure the
#: model is of what it marked); ``kept_mass``: the share of the foreground probability the result
#: holds (low when clean-up dropped or the threshold left out probable foreground);
#: ``certain_fraction``: one minus the share of probable voxels with a probability between 0.1
#: and 0.9. ``benchmarks/tumour_cv.py`` compares them on out-of-fold predictions.
SCORE_RULES = {
    "expected_dice": lambda f: _smoothed(2.0 * f["overlap"], f["soft_voxels"] + f["hard_voxels"],
                                         f),
    "inside_probability": lambda f: _smoothed(f["overlap"], f["hard_voxels"], f),
    "kept_mass": lambda f: _smoothed(f["overlap"], f["soft_voxels"], f),
    "certain_fraction": lambda f: 1.0 - f["uncertain_fraction"],
}


def score_from_sums(sums: dict[str, float], rule: str = "expected_dice"
                    ) -> tuple[float, dict[str, float]]:
    """The score named ``rule`` (:data:`SCORE_RULES`) and the features recorded with it,
    from :func:`expected_dice_sums`."""
    features = {"soft_voxels": sums["soft_voxels"], "hard_voxels": sums["hard_voxels"],
                "overlap": sums["overlap"],
                "uncertain_fraction": sums["uncertain"] / sums["region"] if sums["region"]
                else 0.0}
    try:
        score = SCORE_RULES[rule](features)
    except KeyError:
        raise ValueError(f"unknown confidence score {rule!r}; one of {sorted(SCORE_RULES)}"
                         ) from None
    return float(min(max(score, 0.0), 1.0)), features


def confidence_of(probabilities: np.ndarray, labels: np.ndarray, *,
                  threshold: float | None = None, what: str = "object",
                  rule: str = "expected_dice") -> CaseConfidence:
    """The confidence of one result from its probabilities and label map.

    Examples:
        >>> p = np.zeros((2, 40, 40), np.float32); p[0] = 1.0
        >>> p[0, 10:20, 10:20], p[1, 10:20, 10:20] = 0.02, 0.98
        >>> y = (p[1] > 0.5).astype(np.uint8)
        >>> round(confidence_of(p, y).score, 3)
        0.992
        >>> p[0, 10:20, 10:20], p[1, 10:20, 10:20] = 0.45, 0.55  # same mask, unsure model
        >>> c = confidence_of(p, y, threshold=0.8, what="lesion")
        >>> round(c.score, 3), c.low
        (0.78, True)
    """
    score, features = score_from_sums(expected_dice_sums(probabilities, labels), rule)
    low = threshold is not None and score < threshold
    message = (LOW_CONFIDENCE_MESSAGE.format(score=score, threshold=threshold, what=what)
               if low else None)
    return CaseConfidence(score, threshold, low, message, features)


def case_confidence(prediction: Prediction, *, threshold: float | None = None,
                    what: str | None = None, rule: str = "expected_dice") -> CaseConfidence:
    """The confidence of an engine result (made with ``return_probabilities=True``).

    ``threshold`` defaults to nothing: the engine passes its card's ``confidence.threshold``.

    Raises:
        ModelError: The prediction carries no probabilities.
    """
    from medseg.errors import ModelError

    if prediction.probabilities is None:
        raise ModelError("a confidence score needs the probabilities: predict with "
                         "return_probabilities=True")
    kind = what or ("object" if prediction.instances else
                    "lesion" if prediction.labels.meta.ndim == 3 else "region")
    return confidence_of(prediction.probabilities.array, prediction.labels.array,
                         threshold=threshold, what=kind, rule=rule)


def rank_least_confident(scores: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """``(name, score)`` pairs, least confident first (ties by name): the order in which to
    correct images so that each correction teaches the model the most.

    Examples:
        >>> rank_least_confident([("a", 0.9), ("b", 0.4), ("c", 0.4)])
        [('b', 0.4), ('c', 0.4), ('a', 0.9)]
    """
    return sorted(scores, key=lambda item: (item[1], item[0]))


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve of ``-score`` as a detector of ``positives`` (poor results):
    the probability that a poor result scores lower than a good one (ties count half).

    Examples:
        >>> auroc([0.2, 0.9, 0.5, 0.8], [True, False, True, False])
        1.0
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    if pos.all() or not pos.any():
        return float("nan")
    lower = (s[pos][:, None] < s[~pos][None, :]).sum()
    ties = (s[pos][:, None] == s[~pos][None, :]).sum()
    return float((lower + 0.5 * ties) / (pos.sum() * (~pos).sum()))
