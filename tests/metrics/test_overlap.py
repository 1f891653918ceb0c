"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import DatasetError
from medseg.metrics import (
    CHALLENGE_THRESHOLDS,
    adapted_rand_error,
    challenge_pixel_error,
    dice_per_label,
    hd95_per_label,
    interior_confusion,
    pixel_error,
    score_case,
    summarize,
)


def test_dice_known_values() -> None:
    pred = np.zeros((10, 10), np.uint8)
    gt = np.zeros((10, 10), np.uint8)
    pred[0:4, 0:5] = 1  # 20 voxels
    gt[0:4, 0:4] = 1  # 16 voxels, all inside pred
    gt[9, 9] = 2
    d = dice_per_label(pred, gt, [1, 2, 3])
    assert d[1] == pytest.approx(2 * 16 / 36)
    assert d[2] == 0.0 and d[3] == 1.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(DatasetError, match=r"prediction shape \(2, 2\) differs from label shape"):
        dice_per_label(np.zeros((2, 2)), np.zeros((2, 3)), [1])


def test_hd95_of_a_shifted_cube_is_the_shift_in_mm() -> None:
    gt = np.zeros((30, 30, 30), np.uint8)
    pred = np.zeros_like(gt)
    gt[10:20, 10:20, 10:20] = 1
    pred[13:23, 10:20, 10:20] = 1  # shifted 3 voxels along axis 0
    hd = hd95_per_label(pred, gt, [1], spacing=(2.0, 1.0, 1.0))
    assert hd[1] == pytest.approx(6.0)
    assert math.isnan(hd95_per_label(np.zeros_like(gt), gt, [1])[1])


def test_pixel_error_and_adapted_rand() -> None:
    gt = np.zeros((20, 20), np.uint8)
    gt[:, 10] = 1  # a membrane line splitting two cells
    assert pixel_error(gt, gt) == 0.0
    assert adapted_rand_error(gt, gt) == pytest.approx(0.0)
    merged = np.zeros_like(gt)  # membrane missed: the two cells merge
    assert pixel_error(merged, gt) == pytest.approx(20 / 400)
    assert adapted_rand_error(merged, gt) > 0.3


def test_challenge_pixel_error_counts_and_best_threshold() -> None:
    # 10 pixels: 3 membrane (label 1), 7 interior (label 0).
    label = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    membrane_p = np.array([0.95, 0.75, 0.35, 0.55, 0.25, 0.05, 0.05, 0.05, 0.05, 0.05])
    counts = interior_confusion(membrane_p, label)
    assert counts.shape == (len(CHALLENGE_THRESHOLDS), 3)
    # Threshold 0.5 on the interior probability (1 - p): interior proposed where p < 0.5, i.e.
    # pixels 2 and 4..9: tp 6 (4..9), fp 1 (pixel 2), fn 1 (pixel 3).
    assert counts[CHALLENGE_THRESHOLDS.index(0.5)].tolist() == [6, 1, 1]
    # Threshold 0.4 (p < 0.6): pixels 2..9 -> tp 7, fp 1, fn 0: F = 14 / 15, the best here.
    assert counts[CHALLENGE_THRESHOLDS.index(0.4)].tolist() == [7, 1, 0]
    assert counts[CHALLENGE_THRESHOLDS.index(0.7)].tolist() == [6, 0, 1]  # F = 12 / 13
    assert challenge_pixel_error(counts) == pytest.approx(1 - 14 / 15)
    # The misclassified fraction at the same best binarisation is larger (1/10 vs 1/15).
    assert pixel_error((membrane_p >= 0.6).astype(int), label) == pytest.approx(0.1)


def test_challenge_pixel_error_pools_the_stack_not_the_slice_means() -> None:
    rng = np.random.default_rng(0)
    labels = [(rng.random((16, 16)) < f).astype(np.uint8) for f in (0.1, 0.4)]
    probs = [np.clip(lab + rng.normal(0, s, lab.shape), 0, 1) for lab, s in
             zip(labels, (0.2, 0.6), strict=True)]
    per_slice = [interior_confusion(p, lab) for p, lab in zip(probs, labels, strict=True)]
    stack = interior_confusion(np.stack(probs), np.stack(labels))
    np.testing.assert_array_equal(per_slice[0] + per_slice[1], stack)
    # score_case/summarize report the pooled figure, as the challenge scores its stack.
    from medseg.io import ImageMeta, MedImage

    meta = ImageMeta.identity(2)
    scores = [score_case(str(i), MedImage((p[None] > 0.5).astype(np.uint8), meta),
                         MedImage(lab[None], meta), labels=[1], em=True,
                         membrane_probability=p)
              for i, (p, lab) in enumerate(zip(probs, labels, strict=True))]
    summary = summarize(scores)
    assert summary["challenge_pixel_error"] == pytest.approx(challenge_pixel_error(stack))
    assert summary["challenge_pixel_error"] != pytest.approx(
        np.mean([s.challenge_pixel_error for s in scores]))
