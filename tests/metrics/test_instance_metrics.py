"""Instance-segmentation metrics against values worked out by hand.

DSB thresholds are t = 0.5, 0.55, ..., 0.95 (ten of them); a pair matches at t when IoU > t.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import DatasetError
from medseg.metrics import (
    DSB_THRESHOLDS,
    InstanceScores,
    instance_scores,
    match_instances,
    pooled_scores,
)

EPS = 1e-12  # for hand-computed fractions that are not exact binary floats (1/3, 24/37, ...)


def _two_squares_one_hit_one_false_positive() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((20, 20), np.int32)
    truth[0:10, 0:10] = 1  # A: 100 px
    truth[12:16, 12:16] = 2  # B: 16 px, never predicted
    pred = np.zeros_like(truth)
    pred[0:6, 0:10] = 1  # inside A: 60 px -> IoU(A) = 60 / 100 = 0.6
    pred[17:20, 0:3] = 2  # 9 px on background: a false positive
    return truth, pred


def test_dsb_thresholds() -> None:
    assert DSB_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_one_hit_with_iou_0_6_plus_a_false_positive() -> None:
    truth, pred = _two_squares_one_hit_one_false_positive()
    # IoU matrix: A-P1 = 0.6, everything else 0
    np.testing.assert_array_equal(match_instances(truth, pred), [[0.6, 0.0], [0.0, 0.0]])
    s = instance_scores(truth, pred)
    assert (s.n_true, s.n_pred) == (2, 2)
    # t = 0.5, 0.55: A-P1 matches (0.6 > t): TP=1, FP=1 (P2), FN=1 (B)
    # t = 0.6 (strict >: 0.6 is not > 0.6) and above: TP=0, FP=2, FN=2
    assert s.tp == (1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    assert s.fp == (1, 1, 2, 2, 2, 2, 2, 2, 2, 2)
    assert s.fn == (1, 1, 2, 2, 2, 2, 2, 2, 2, 2)
    # AP = TP / (TP + FP + FN) = 1/3 at 0.5 and 0.55, 0 above
    assert s.ap[:2] == pytest.approx((1 / 3, 1 / 3), abs=EPS)
    assert s.ap[2:] == (0.0,) * 8
    assert s.ap50 == pytest.approx(1 / 3, abs=EPS)
    # F1 = 2TP / (2TP + FP + FN) = 2 / 4 = 0.5 at 0.5
    assert s.f1[:2] == (0.5, 0.5) and s.f1_50 == 0.5
    assert s.f1[2:] == (0.0,) * 8
    # DSB score = (1/3 + 1/3 + 8 * 0) / 10 = 1/15
    assert s.dsb_score == pytest.approx(1 / 15, abs=EPS)
    # pixel Dice: |truth fg| = 116, |pred fg| = 69, overlap = 60 -> 120 / 185 = 24/37
    assert s.pixel_dice == pytest.approx(24 / 37, abs=EPS)


@pytest.mark.parametrize("rows", range(10, 21))
def test_iou_exactly_on_each_threshold_is_not_a_match(rows: int) -> None:
    truth = np.zeros((20, 10), np.uint8)
    truth[:, :] = 1  # 200 px
    pred = np.zeros_like(truth)
    pred[:rows, :] = 1  # rows * 10 px, all inside truth -> IoU = rows / 20 = 0.5 + 0.05 (rows-10)
    assert match_instances(truth, pred)[0, 0] == rows / 20
    s = instance_scores(truth, pred)
    # thresholds strictly below the IoU: the first rows - 10 of them (0 for IoU = 0.5, all ten
    # for IoU = 1.0). Matched: AP 1 (TP=1); unmatched: TP=0, FP=1, FN=1, AP 0.
    k = rows - 10
    assert s.tp == (1,) * k + (0,) * (10 - k)
    assert s.ap == (1.0,) * k + (0.0,) * (10 - k)
    assert s.dsb_score == pytest.approx(k / 10, abs=EPS)


def test_perfect_match_3d_with_non_consecutive_ids() -> None:
    truth = np.zeros((4, 6, 6), np.int64)
    truth[0:2, 0:3, 0:3] = 3
    truth[2:4, 3:6, 3:6] = 17
    pred = np.zeros_like(truth)
    pred[truth == 3] = 9  # same objects, other ids, and in the opposite order
    pred[truth == 17] = 2
    # rows: truth ids (3, 17); columns: pred ids (2, 9). 3 <-> 9 and 17 <-> 2.
    np.testing.assert_array_equal(match_instances(truth, pred), [[0.0, 1.0], [1.0, 0.0]])
    s = instance_scores(truth, pred)
    assert (s.n_true, s.n_pred) == (2, 2)
    assert s.tp == (2,) * 10 and s.fp == (0,) * 10 and s.fn == (0,) * 10
    assert s.ap == (1.0,) * 10 and s.f1 == (1.0,) * 10
    assert s.dsb_score == 1.0 and s.pixel_dice == 1.0 and s.ap50 == 1.0 and s.f1_50 == 1.0


def test_ids_without_background_and_bool_maps() -> None:
    # no 0 anywhere: the whole 2x2 image is truth object 5; pred is a bool mask of one row
    truth = np.full((2, 2), 5, np.uint16)
    pred = np.array([[True, True], [False, False]])
    np.testing.assert_array_equal(match_instances(truth, pred), [[0.5]])  # 2 / 4
    s = instance_scores(truth, pred)
    assert (s.n_true, s.n_pred, s.tp[0], s.ap50) == (1, 1, 0, 0.0)
    assert s.pixel_dice == pytest.approx(2 * 2 / (4 + 2), abs=EPS)  # 2/3


def test_empty_maps() -> None:
    empty = np.zeros((5, 5), np.int32)
    m = match_instances(empty, empty)
    assert m.shape == (0, 0)
    s = instance_scores(empty, empty)
    # nothing to find, nothing found: a perfect score
    assert (s.n_true, s.n_pred) == (0, 0)
    assert s.ap == (1.0,) * 10 and s.f1 == (1.0,) * 10
    assert s.dsb_score == 1.0 and s.pixel_dice == 1.0

    one = empty.copy()
    one[1:3, 1:3] = 4
    missed = instance_scores(one, empty)  # TP=0, FP=0, FN=1 -> AP 0/1
    assert match_instances(one, empty).shape == (1, 0)
    assert (missed.tp[0], missed.fp[0], missed.fn[0]) == (0, 0, 1)
    assert missed.ap == (0.0,) * 10 and missed.dsb_score == 0.0 and missed.pixel_dice == 0.0
    invented = instance_scores(empty, one)  # TP=0, FP=1, FN=0
    assert match_instances(empty, one).shape == (0, 1)
    assert (invented.tp[0], invented.fp[0], invented.fn[0]) == (0, 1, 0)
    assert invented.ap == (0.0,) * 10 and invented.f1_50 == 0.0 and invented.pixel_dice == 0.0


def test_merged_prediction_over_two_touching_objects_is_no_match() -> None:
    truth = np.zeros((4, 8), np.int32)
    truth[:, 0:4] = 1  # 16 px
    truth[:, 4:8] = 2  # 16 px, touching object 1
    pred = np.ones_like(truth)  # one object over both: 32 px
    # IoU with each truth object = 16 / 32 = 0.5, which is not > 0.5
    np.testing.assert_array_equal(match_instances(truth, pred), [[0.5], [0.5]])
    s = instance_scores(truth, pred)
    # TP=0, FP=1, FN=2 at every threshold; AP = F1 = 0; the foreground is still perfect
    assert s.tp == (0,) * 10 and s.fp == (1,) * 10 and s.fn == (2,) * 10
    assert s.ap50 == 0.0 and s.f1_50 == 0.0 and s.dsb_score == 0.0
    assert s.pixel_dice == 1.0


def test_split_prediction_matches_the_larger_part_only() -> None:
    truth = np.zeros((10, 10), np.int32)
    truth[:, :] = 1  # 100 px
    pred = np.zeros_like(truth)
    pred[:, 0:6] = 1  # 60 px -> IoU 0.6
    pred[:, 6:10] = 2  # 40 px -> IoU 0.4
    np.testing.assert_array_equal(match_instances(truth, pred), [[0.6, 0.4]])
    s = instance_scores(truth, pred)
    # t = 0.5, 0.55: TP=1 (part 1), FP=1 (part 2), FN=0 -> AP 1/2, F1 = 2/3
    assert (s.tp[0], s.fp[0], s.fn[0]) == (1, 1, 0)
    assert s.ap50 == 0.5 and s.f1_50 == pytest.approx(2 / 3, abs=EPS)
    # t >= 0.6: TP=0, FP=2, FN=1
    assert (s.tp[2], s.fp[2], s.fn[2]) == (0, 2, 1)
    # DSB = (0.5 + 0.5) / 10
    assert s.dsb_score == pytest.approx(0.1, abs=EPS)


def test_custom_thresholds_and_their_limits() -> None:
    truth, pred = _two_squares_one_hit_one_false_positive()
    s = instance_scores(truth, pred, thresholds=(0.5, 0.75))
    assert s.thresholds == (0.5, 0.75) and s.tp == (1, 0)
    assert s.dsb_score == pytest.approx(1 / 15, abs=EPS)  # always over the ten DSB thresholds
    no_half = instance_scores(truth, pred, thresholds=[0.55])
    assert no_half.tp == (1,)
    with pytest.raises(ValueError, match="not among"):
        _ = no_half.ap50
    assert no_half.to_dict()["ap50"] is None
    for bad in ([0.3], [0.5, 0.45], [1.5], []):
        with pytest.raises(ValueError):
            instance_scores(truth, pred, thresholds=bad)


def test_to_dict() -> None:
    truth, pred = _two_squares_one_hit_one_false_positive()
    d = instance_scores(truth, pred).to_dict()
    assert set(d) == {"n_true", "n_pred", "thresholds", "tp", "fp", "fn", "ap", "f1",
                      "dsb_score", "pixel_dice", "ap50", "f1_50"}
    assert d["thresholds"] == list(DSB_THRESHOLDS)
    assert d["tp"] == [1, 1] + [0] * 8 and d["f1_50"] == 0.5
    assert isinstance(instance_scores(truth, pred), InstanceScores)


def test_bad_inputs() -> None:
    a = np.zeros((3, 3), np.int32)
    with pytest.raises(DatasetError, match="shape"):
        match_instances(a, np.zeros((3, 4), np.int32))
    with pytest.raises(DatasetError, match="non-negative"):
        instance_scores(a - 1, a)
    with pytest.raises(DatasetError, match="integer"):
        instance_scores(a, a + 0.5)
    # whole-number floats are accepted as ids
    assert instance_scores(a.astype(np.float32) + 1, a + 1).ap50 == 1.0


def test_pooled_versus_mean_per_image() -> None:
    # image 1: one 100 px object, predicted by a 60 px piece inside it -> IoU 0.6
    t1 = np.zeros((10, 12), np.int32)
    t1[:, 0:10] = 1
    p1 = np.zeros_like(t1)
    p1[0:6, 0:10] = 1
    # per image: matched at 0.5 and 0.55 only -> AP (1, 1, 0 x 8), DSB = 0.2;
    # pixel Dice = 2*60 / (100 + 60) = 0.75
    # image 2: three objects, nothing predicted -> AP 0 everywhere, DSB 0, pixel Dice 0
    t2 = np.zeros((10, 12), np.int32)
    t2[0:2, 0:2], t2[4:6, 4:6], t2[8:10, 8:10] = 1, 2, 3
    p2 = np.zeros_like(t2)
    pairs = ((t, p) for t, p in [(t1, p1), (t2, p2)])  # a one-shot generator is enough
    r = pooled_scores(pairs)
    # pooled counts: t = 0.5, 0.55: TP=1, FP=0, FN=0+3=3 -> AP 1/4; t >= 0.6: TP=0, FP=1, FN=4
    assert r["tp_pooled"][0.5] == 1 and r["fn_pooled"][0.5] == 3 and r["fp_pooled"][0.5] == 0
    assert r["tp_pooled"][0.6] == 0 and r["fn_pooled"][0.6] == 4 and r["fp_pooled"][0.6] == 1
    assert r["ap_pooled"] == {t: (0.25 if t < 0.6 else 0.0) for t in DSB_THRESHOLDS}
    assert r["ap50_pooled"] == 0.25
    assert r["dsb_score_pooled"] == pytest.approx((0.25 + 0.25) / 10, abs=EPS)  # 0.05
    assert r["f1_50_pooled"] == pytest.approx(2 / (2 + 0 + 3), abs=EPS)  # 0.4
    # per image (Kaggle): AP50 = (1 + 0) / 2 = 0.5 (pooled: 0.25); DSB = (0.2 + 0) / 2 = 0.1
    assert r["ap50_mean_per_image"] == 0.5
    assert r["dsb_score_mean_per_image"] == pytest.approx(0.1, abs=EPS)
    assert r["pixel_dice_mean"] == pytest.approx((0.75 + 0.0) / 2, abs=EPS)
    assert (r["n_images"], r["n_true"], r["n_pred"]) == (2, 4, 1)


def test_pooled_over_nothing_and_over_empty_images() -> None:
    r = pooled_scores([])
    assert r["n_images"] == 0 and r["n_true"] == 0
    assert math.isnan(r["ap50_pooled"]) and math.isnan(r["dsb_score_mean_per_image"])
    empty = np.zeros((3, 3), np.int32)
    r = pooled_scores([(empty, empty), (empty, empty)])
    assert r["ap50_pooled"] == 1.0 and r["dsb_score_pooled"] == 1.0
    assert r["ap50_mean_per_image"] == 1.0 and r["pixel_dice_mean"] == 1.0


def test_iou_matrix_agrees_with_a_direct_count() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, (12, 12)) * 3  # ids 3, 6, ..., 15: non-consecutive
    pred = rng.integers(0, 5, (12, 12))
    got = match_instances(truth, pred)
    t_ids = [i for i in np.unique(truth) if i]
    p_ids = [j for j in np.unique(pred) if j]
    want = np.array([[np.sum((truth == i) & (pred == j)) / np.sum((truth == i) | (pred == j))
                      for j in p_ids] for i in t_ids])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


def test_medseg_evaluate_instances_on_folders(tmp_path) -> None:
    """Two truth squares (PNG), a TIFF prediction that finds one exactly: AP 1/2 everywhere."""
    import tifffile
    from PIL import Image
    from typer.testing import CliRunner

    from medseg.cli.evaluate import app

    truth = np.zeros((20, 30), np.uint16)
    truth[2:6, 3:9] = 1
    truth[10:15, 20:28] = 2
    pred = np.zeros_like(truth)
    pred[10:15, 20:28] = 7  # the second square, exactly, under another id
    (tmp_path / "labels").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(truth).save(tmp_path / "labels" / "img1.png")
    tifffile.imwrite(tmp_path / "pred" / "img1.tif", pred)
    result = CliRunner().invoke(app, ["instances", str(tmp_path / "pred"),
                                      str(tmp_path / "labels"), "--csv",
                                      str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    assert "1 image(s), 2 true and 1 predicted objects" in result.output
    assert "AP@0.5 pooled 0.5000   DSB score pooled 0.5000" in result.output
    assert (tmp_path / "s.csv").read_text().splitlines()[1].startswith("img1,2,1,0.5,0.5,")
