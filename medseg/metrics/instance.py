"""Instance-segmentation metrics: object matching by IoU, DSB-style AP, F1 and pooled scores.

Both inputs are *instance* label maps of identical shape (2D or 3D; any number of axes works):
0 is background and every other value is one object. Ids need not be consecutive; they are
relabelled internally. The pairwise overlaps of all objects come from one contingency table of
``(truth id, prediction id)`` pixel pairs built with :mod:`scipy.sparse`, so the cost is linear
in the number of pixels and memory grows with the number of *overlapping* pairs only.

Matching rule
    A truth object and a predicted object match at threshold ``t`` when their IoU is strictly
    greater than ``t`` (``IoU > t``), as in the 2018 Data Science Bowl ("IoU above the
    threshold"). StarDist's ``stardist.matching.matching`` counts ``IoU >= t`` instead; the two
    differ only when an IoU equals a threshold exactly (e.g. a prediction that merges two equal,
    touching objects has IoU 0.5 with each: no match here, a match there).

    Any two objects with IoU > 0.5 are each other's *only* such partner (IoU > 0.5 means the
    intersection covers more than half of each object, and two disjoint objects cannot both
    cover more than half of a third). Hence for thresholds >= 0.5 the one-to-one matching is
    unique and needs no assignment solver; thresholds below 0.5 are rejected.

Scores per threshold (TP, FP, FN counted over objects)
    * ``ap`` = TP / (TP + FP + FN): the DSB "average precision" (StarDist calls it accuracy).
    * ``f1`` = 2 TP / (2 TP + FP + FN).
    Both are 1.0 when both maps are empty (nothing to find, nothing found) and 0.0 when only
    one of them is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from medseg.errors import DatasetError

DSB_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.5, 1.0, 0.05), 2))
"""IoU thresholds of the 2018 Data Science Bowl: 0.5, 0.55, ..., 0.95."""


def _integral_floats(arr: np.ndarray) -> bool:
    """True for a float array whose values are all finite whole numbers (e.g. 3.0)."""
    return bool(np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr))
                and np.array_equal(arr, np.round(arr)))


def _as_instance_labels(labels: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """Flatten ``labels`` and relabel its objects to 1..n (0 stays background); return (ids, n)."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif not np.issubdtype(arr.dtype, np.integer) and not _integral_floats(arr):
        raise DatasetError(f"{what}: an instance label map must hold integer ids, "
                           f"got dtype {arr.dtype} with non-integer values")
    if arr.size and arr.min() < 0:
        raise DatasetError(f"{what}: instance ids must be non-negative, found {arr.min()}")
    values, inverse = np.unique(arr.ravel(), return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    if values.size and values[0] == 0:
        return inverse, int(values.size - 1)
    return inverse + 1, int(values.size)  # no background present: shift so ids start at 1


@dataclass(frozen=True)
class _Overlaps:
    """Object counts, overlapping object pairs with their IoU (ids 1-based), foreground counts."""

    n_true: int
    n_pred: int
    rows: np.ndarray  # truth id of each overlapping pair
    cols: np.ndarray  # prediction id of each overlapping pair
    iou: np.ndarray  # IoU of each overlapping pair
    fg_true: int  # foreground pixel counts and their intersection, for pixel Dice
    fg_pred: int
    fg_both: int


def _overlaps(truth: np.ndarray, pred: np.ndarray) -> _Overlaps:
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise DatasetError(
            f"prediction shape {pred.shape} differs from truth shape {truth.shape}"
        )
    t, n_true = _as_instance_labels(truth, "truth")
    p, n_pred = _as_instance_labels(pred, "prediction")
    # contingency table: table[i, j] = number of pixels with truth id i and prediction id j
    table = sparse.coo_matrix(
        (np.ones(t.size, dtype=np.int64), (t, p)), shape=(n_true + 1, n_pred + 1)
    ).tocsr()  # converting to CSR sums the duplicate (i, j) entries
    area_true = np.asarray(table.sum(axis=1)).ravel()
    area_pred = np.asarray(table.sum(axis=0)).ravel()
    coo = table.tocoo()
    rows, cols, inter = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
    both_fg = (rows > 0) & (cols > 0)
    rows, cols, inter = rows[both_fg], cols[both_fg], inter[both_fg]
    union = area_true[rows] + area_pred[cols] - inter
    fg_true = int(t.size - area_true[0])
    fg_pred = int(p.size - area_pred[0])
    return _Overlaps(
        n_true=n_true, n_pred=n_pred, rows=rows, cols=cols,
        iou=inter / union.astype(np.float64),
        fg_true=fg_true, fg_pred=fg_pred, fg_both=int(inter.sum()),
    )


def match_instances(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every truth object with every predicted object.

    Args:
        truth: Ground-truth instance label map (0 = background, other values = object ids).
        pred: Predicted instance label map of the same shape.

    Returns:
        Float array of shape ``(n_true, n_pred)``; entry ``[i, j]`` is the IoU of the
        ``i``-th truth object and the ``j``-th predicted object, objects ordered by ascending
        id (so with ids 1..N, row ``i`` is id ``i + 1``). The matrix is dense (8 bytes per
        pair); :func:`instance_scores` never builds it and stays cheap for thousands of objects.

    Raises:
        DatasetError: shapes differ, or a map holds negative or non-integer values.

    Examples:
        >>> t = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
        >>> p = np.array([[0, 7, 7, 0], [0, 7, 7, 0]])
        >>> match_instances(t, p).tolist()  # 2 shared pixels, 6 in the union
        [[0.3333333333333333]]
    """
    ov = _overlaps(truth, pred)
    out = np.zeros((ov.n_true, ov.n_pred), dtype=np.float64)
    out[ov.rows - 1, ov.cols - 1] = ov.iou
    return out


def _ratio(num: float, den: float) -> float:
    """``num / den`` with 0/0 read as a perfect score (both maps empty)."""
    return 1.0 if den == 0 else float(num) / float(den)


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if not ts:
        raise ValueError("at least one IoU threshold is required")
    bad = [t for t in ts if not 0.5 <= t <= 1.0]
    if bad:
        raise ValueError(f"IoU thresholds must lie in [0.5, 1.0] (matching is only unique for "
                         f"IoU > 0.5), got {bad}")
    return ts


@dataclass(frozen=True)
class InstanceScores:
    """Object-level scores of one predicted instance map against its ground truth.

    Attributes:
        n_true: Number of truth objects.
        n_pred: Number of predicted objects.
        thresholds: IoU thresholds; a pair matches at ``t`` when ``IoU > t``.
        tp: Matched pairs at each threshold.
        fp: Predicted objects left unmatched at each threshold.
        fn: Truth objects left unmatched at each threshold.
        ap: ``TP / (TP + FP + FN)`` at each threshold (1.0 if both maps are empty).
        f1: ``2 TP / (2 TP + FP + FN)`` at each threshold (1.0 if both maps are empty).
        dsb_score: Mean AP over :data:`DSB_THRESHOLDS` (always those, whatever ``thresholds``).
        pixel_dice: Dice of the foregrounds ``truth > 0`` and ``pred > 0`` (1.0 if both empty).
    """

    n_true: int
    n_pred: int
    thresholds: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    ap: tuple[float, ...]
    f1: tuple[float, ...]
    dsb_score: float
    pixel_dice: float

    def _at(self, values: tuple[float, ...], threshold: float) -> float:
        for t, v in zip(self.thresholds, values, strict=True):
            if np.isclose(t, threshold):
                return v
        raise ValueError(f"IoU threshold {threshold} is not among {self.thresholds}")

    @property
    def ap50(self) -> float:
        """AP at IoU threshold 0.5 (``ValueError`` if 0.5 is not among ``thresholds``)."""
        return self._at(self.ap, 0.5)

    @property
    def f1_50(self) -> float:
        """F1 at IoU threshold 0.5 (``ValueError`` if 0.5 is not among ``thresholds``)."""
        return self._at(self.f1, 0.5)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict: the fields (tuples as lists) plus ``ap50``/``f1_50``.

        ``ap50`` and ``f1_50`` are ``None`` when 0.5 is not among ``thresholds``.
        """
        out: dict[str, Any] = {
            "n_true": self.n_true,
            "n_pred": self.n_pred,
            "thresholds": list(self.thresholds),
            "tp": list(self.tp),
            "fp": list(self.fp),
            "fn": list(self.fn),
            "ap": list(self.ap),
            "f1": list(self.f1),
            "dsb_score": self.dsb_score,
            "pixel_dice": self.pixel_dice,
        }
        has_50 = any(np.isclose(t, 0.5) for t in self.thresholds)
        out["ap50"] = self.ap50 if has_50 else None
        out["f1_50"] = self.f1_50 if has_50 else None
        return out


def _counts(matched_iou: np.ndarray, n_true: int, n_pred: int,
            thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN per threshold from the IoUs of the (unique) pairs with IoU > 0.5."""
    tp = (matched_iou[None, :] > np.asarray(thresholds, dtype=np.float64)[:, None]).sum(axis=1)
    return tp, n_pred - tp, n_true - tp


def instance_scores(
    truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS
) -> InstanceScores:
    """Match objects one-to-one by IoU and score the prediction at each threshold.

    A pair matches at threshold ``t`` when ``IoU > t`` (strictly; see the module docstring).
    IoUs are compared in float64; division is correctly rounded, so an IoU exactly equal to a
    decimal threshold (e.g. 60/100 vs 0.6) compares equal and does not match.

    Args:
        truth: Ground-truth instance label map (0 = background, ids need not be consecutive).
        pred: Predicted instance label map of the same shape.
        thresholds: IoU thresholds in [0.5, 1.0]; defaults to :data:`DSB_THRESHOLDS`.

    Returns:
        :class:`InstanceScores`.

    Raises:
        ValueError: a threshold below 0.5 (or above 1.0), or no thresholds.
        DatasetError: shapes differ, or a map holds negative or non-integer values.

    Examples:
        >>> t = np.zeros((4, 4), int); t[:2, :2] = 1
        >>> s = instance_scores(t, t)
        >>> s.ap50, s.dsb_score, s.pixel_dice
        (1.0, 1.0, 1.0)
    """
    ts = _check_thresholds(thresholds)
    ov = _overlaps(truth, pred)
    matched = ov.iou[ov.iou > 0.5]  # unique one-to-one pairs (see module docstring)
    tp, fp, fn = _counts(matched, ov.n_true, ov.n_pred, ts)
    dsb_tp, dsb_fp, dsb_fn = _counts(matched, ov.n_true, ov.n_pred, DSB_THRESHOLDS)
    dsb_ap = [_ratio(a, a + b + c) for a, b, c in zip(dsb_tp, dsb_fp, dsb_fn, strict=True)]
    return InstanceScores(
        n_true=ov.n_true,
        n_pred=ov.n_pred,
        thresholds=ts,
        tp=tuple(int(v) for v in tp),
        fp=tuple(int(v) for v in fp),
        fn=tuple(int(v) for v in fn),
        ap=tuple(_ratio(a, a + b + c) for a, b, c in zip(tp, fp, fn, strict=True)),
        f1=tuple(_ratio(2 * a, 2 * a + b + c) for a, b, c in zip(tp, fp, fn, strict=True)),
        dsb_score=float(np.mean(dsb_ap)),
        pixel_dice=_ratio(2 * ov.fg_both, ov.fg_true + ov.fg_pred),
    )


def pooled_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Dataset-level scores over ``(truth, pred)`` pairs, pooled and averaged per image.

    Two conventions are reported side by side, at :data:`DSB_THRESHOLDS`:

    * *pooled* (StarDist's ``matching_dataset(..., by_image=False)``): TP, FP and FN are summed
      over all images first, then ``AP = TP / (TP + FP + FN)`` per threshold. Crowded images
      weigh more.
    * *mean per image* (the Kaggle DSB 2018 leaderboard): each image's AP (or DSB score) is
      computed on its own and the results are averaged. Every image weighs the same.

    Args:
        pairs: Iterable of ``(truth, pred)`` instance label maps; consumed once, lazily.

    Returns:
        A plain dict with keys

        * ``ap_pooled``: ``{threshold: pooled AP}`` for every DSB threshold,
        * ``ap50_pooled``: pooled AP at 0.5,
        * ``dsb_score_pooled``: mean of ``ap_pooled`` over the thresholds,
        * ``f1_50_pooled``: ``2 TP / (2 TP + FP + FN)`` from the counts summed at 0.5,
        * ``ap50_mean_per_image`` / ``dsb_score_mean_per_image``: means of per-image values,
        * ``pixel_dice_mean``: mean per-image foreground Dice,
        * ``n_images``, ``n_true``, ``n_pred``: totals,
        * ``tp_pooled``, ``fp_pooled``, ``fn_pooled``: ``{threshold: summed count}``.

        With no pairs at all the score entries are ``nan`` and the totals 0.

    Raises:
        ValueError, DatasetError: as :func:`instance_scores`.
    """
    ts = DSB_THRESHOLDS
    tp = np.zeros(len(ts), dtype=np.int64)
    fp = np.zeros(len(ts), dtype=np.int64)
    fn = np.zeros(len(ts), dtype=np.int64)
    ap50_images: list[float] = []
    dsb_images: list[float] = []
    dice_images: list[float] = []
    n_true = n_pred = 0
    for truth, pred in pairs:
        s = instance_scores(truth, pred, ts)
        tp += s.tp
        fp += s.fp
        fn += s.fn
        n_true += s.n_true
        n_pred += s.n_pred
        ap50_images.append(s.ap50)
        dsb_images.append(s.dsb_score)
        dice_images.append(s.pixel_dice)
    n_images = len(ap50_images)
    nan = float("nan")
    if n_images == 0:
        ap_pooled = {t: nan for t in ts}
        f1_50 = nan
    else:
        ap_pooled = {t: _ratio(a, a + b + c) for t, a, b, c in zip(ts, tp, fp, fn, strict=True)}
        f1_50 = _ratio(2 * tp[0], 2 * tp[0] + fp[0] + fn[0])
    return {
        "ap50_pooled": ap_pooled[ts[0]],
        "dsb_score_pooled": float(np.mean(list(ap_pooled.values()))),
        "ap50_mean_per_image": float(np.mean(ap50_images)) if n_images else nan,
        "dsb_score_mean_per_image": float(np.mean(dsb_images)) if n_images else nan,
        "f1_50_pooled": f1_50,
        "pixel_dice_mean": float(np.mean(dice_images)) if n_images else nan,
        "n_images": n_images,
        "n_true": n_true,
        "n_pred": n_pred,
        "ap_pooled": ap_pooled,
        "tp_pooled": {t: int(v) for t, v in zip(ts, tp, strict=True)},
        "fp_pooled": {t: int(v) for t, v in zip(ts, fp, strict=True)},
        "fn_pooled": {t: int(v) for t, v in zip(ts, fn, strict=True)},
    }


def evaluate_instance_folders(prediction_dir: str | Path, label_dir: str | Path
                              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Instance scores of every label image in ``label_dir`` against the same-named (by case
    id) prediction in ``prediction_dir``: the pooled summary of :func:`pooled_scores` and one
    row per image (id, objects, AP@0.5, DSB score, F1@0.5, pixel Dice).

    Both are read with :func:`medseg.io.read_image`, so a TIFF prediction and a PNG mask are
    compared in the same pixel order.

    Raises:
        DatasetError: Missing folders, a label without a prediction, or shapes that differ.
    """
    from medseg.io import read_image
    from medseg.metrics.evaluate import LABEL_SUFFIXES, pair_by_case_id

    pairs = pair_by_case_id(Path(label_dir), Path(prediction_dir), suffixes=LABEL_SUFFIXES,
                            primary="label", other="prediction")
    arrays, rows = [], []
    for case_id, (label_path, pred_path) in sorted(pairs.items()):
        truth = np.asarray(read_image(label_path).array[0])
        pred = np.asarray(read_image(pred_path).array[0])
        if truth.shape != pred.shape:
            raise DatasetError(f"case {case_id}: prediction shape {pred.shape} differs from "
                               f"the label's {truth.shape}")
        arrays.append((truth, pred))
        rows.append(instance_row(case_id, instance_scores(truth, pred)))
    return pooled_scores(arrays), rows


def instance_row(case_id: str, s: InstanceScores) -> dict[str, Any]:
    """One image's row of object scores: id, objects, AP@0.5, DSB score, F1@0.5, Dice."""
    return {"case_id": case_id, "n_true": s.n_true, "n_pred": s.n_pred, "ap50": s.ap50,
            "dsb_score": s.dsb_score, "f1_50": s.f1_50, "pixel_dice": s.pixel_dice}
