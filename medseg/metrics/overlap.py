"""Per-label overlap and distance metrics for integer label maps.

All functions take label maps of identical shape (any number of spatial axes, no channel axis)
with integer class values, and return plain floats so results go straight into CSV/JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from medseg.errors import DatasetError


def _check_pair(prediction: np.ndarray, label: np.ndarray) -> None:
    if prediction.shape != label.shape:
        raise DatasetError(
            f"prediction shape {prediction.shape} differs from label shape {label.shape}"
        )


def dice_per_label(
    prediction: np.ndarray, label: np.ndarray, labels: Iterable[int]
) -> dict[int, float]:
    """Dice coefficient of each class value in ``labels``.

    A class absent from both maps scores 1.0 (nothing to find, nothing found), absent from one
    scores 0.0.

    Examples:
        >>> a = np.array([0, 1, 1, 2]); b = np.array([0, 1, 2, 2])
        >>> {k: round(v, 3) for k, v in dice_per_label(a, b, [1, 2]).items()}
        {1: 0.667, 2: 0.667}
    """
    _check_pair(prediction, label)
    out: dict[int, float] = {}
    for c in labels:
        p = prediction == c
        t = label == c
        denom = int(p.sum()) + int(t.sum())
        out[int(c)] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom
    return out


def hd95_per_label(
    prediction: np.ndarray,
    label: np.ndarray,
    labels: Iterable[int],
    *,
    spacing: Sequence[float] | None = None,
) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance per class, in mm when ``spacing`` is given.

    Uses :func:`monai.metrics.compute_hausdorff_distance`. A class missing in one of the two
    maps gives ``nan`` (the distance is undefined), missing in both gives ``0.0``.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    _check_pair(prediction, label)
    out: dict[int, float] = {}
    for c in labels:
        p = prediction == c
        t = label == c
        if not p.any() and not t.any():
            out[int(c)] = 0.0
            continue
        if not p.any() or not t.any():
            out[int(c)] = float("nan")
            continue
        pt = torch.from_numpy(p[None, None].astype(np.float32))
        tt = torch.from_numpy(t[None, None].astype(np.float32))
        hd = compute_hausdorff_distance(
            pt, tt, percentile=95, spacing=list(spacing) if spacing is not None else None
        )
        out[int(c)] = float(hd.reshape(-1)[0])
    return out


def pixel_error(prediction: np.ndarray, label: np.ndarray) -> float:
    """Fraction of pixels whose binary class differs (1 - accuracy), at the prediction as given.

    Stricter than the ISBI 2012 challenge's own "pixel error" (:func:`challenge_pixel_error`).

    Examples:
        >>> pixel_error(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
        0.25
    """
    _check_pair(prediction, label)
    return float(np.mean((prediction > 0) != (label > 0)))


#: Thresholds of the ISBI 2012 challenge's evaluation script (Fiji ``PixelError``): 0.0 to 1.0
#: in steps of 0.1, applied to the proposal's cell-interior probability.
CHALLENGE_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def interior_confusion(
    membrane_probability: np.ndarray,
    label: np.ndarray,
    thresholds: Sequence[float] = CHALLENGE_THRESHOLDS,
) -> np.ndarray:
    """Cell-interior true/false positives and false negatives at each threshold.

    As the ISBI 2012 challenge scores a proposal: the positive class is the cell interior
    (``label == 0`` here, where 1 = membrane), and a pixel is proposed as interior where its
    interior probability ``1 - membrane_probability`` exceeds the threshold. A binary membrane
    map is a valid proposal (probability 0 or 1). Counts from several slices add up, so a stack
    is scored by summing its slices' counts (:func:`challenge_pixel_error`).

    Returns:
        ``int64`` array ``(len(thresholds), 3)``: columns true positives, false positives,
        false negatives.
    """
    _check_pair(membrane_probability, label)
    interior = np.asarray(label) == 0
    proposal = 1.0 - np.asarray(membrane_probability, dtype=np.float32)
    counts = np.zeros((len(thresholds), 3), dtype=np.int64)
    for i, th in enumerate(thresholds):
        proposed = proposal > th
        tp = int(np.count_nonzero(proposed & interior))
        counts[i] = (tp, int(np.count_nonzero(proposed)) - tp,
                     int(np.count_nonzero(interior)) - tp)
    return counts


def challenge_pixel_error(counts: np.ndarray) -> float:
    """The ISBI 2012 challenge's pixel error: 1 - the maximal F-score over thresholds.

    This is the definition behind the challenge leaderboard (and the U-Net paper's 0.0611):
    "1 - the maximal F-score of pixel similarity", computed by Fiji's ``PixelError`` on counts
    summed over the stack, the cell interior being the positive class. It is not the fraction
    of misclassified pixels (:func:`pixel_error`), which is larger for the same prediction.

    Args:
        counts: From :func:`interior_confusion` (summed over slices for a stack).

    Examples:
        >>> label = np.array([[1, 0, 0, 0]]); prob = np.array([[0.9, 0.2, 0.6, 0.1]])
        >>> round(challenge_pixel_error(interior_confusion(prob, label)), 3)
        0.0
    """
    tp, fp, fn = (np.asarray(counts, dtype=np.float64)[:, i] for i in range(3))
    denom = 2 * tp + fp + fn
    f = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(1.0 - f.max())


def adapted_rand_error(prediction: np.ndarray, label: np.ndarray) -> float:
    """Adapted Rand error of the cell regions (ISBI 2012's main metric), via scikit-image.

    Both inputs are membrane maps (1 = membrane, 0 = cell interior); the cell interiors are
    split into connected components (membrane as background) before comparison, as the
    challenge does.
    """
    from skimage.measure import label as connected_components
    from skimage.metrics import adapted_rand_error as skimage_are

    _check_pair(prediction, label)
    seg = connected_components(prediction == 0, connectivity=1)
    gt = connected_components(label == 0, connectivity=1)
    error, _precision, _recall = skimage_are(gt, seg, ignore_labels=(0,))
    return float(error)
