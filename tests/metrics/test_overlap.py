"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import DatasetError
from medseg.metrics import adapted_rand_error, dice_per_label, hd95_per_label, pixel_error


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
