"""The per-case confidence score through the engine, the batch record and its warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import ThresholdNet, oblique_meta, threshold_card

from medseg.errors import ModelError
from medseg.inference import Segmenter
from medseg.inference.batch import run_batch
from medseg.inference.confidence import case_confidence, confidence_of, rank_least_confident
from medseg.io import MedImage, write_nifti


def _ball(value: float, shape: tuple[int, ...] = (24, 26, 22)) -> MedImage:
    """Background -1 (certain background for ThresholdNet), a ball of ``value``: 1.0 is
    certain foreground, 0.27 sits just past the network's decision boundary (p ~ 0.54)."""
    idx = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum((idx[i] - shape[i] / 2) ** 2 for i in range(3)))
    array = np.where(r <= 7, value, -1.0).astype(np.float32)[None]
    return MedImage(array, oblique_meta(3))


def _segmenter(threshold: float | None) -> Segmenter:
    card = threshold_card(roi=[16, 16, 16])
    card.confidence = None if threshold is None else {"threshold": threshold}
    return Segmenter(ThresholdNet(), card, device="cpu")


def test_confident_and_unsure_results_scored_and_flagged() -> None:
    seg = _segmenter(0.8)
    sure = seg.predict(_ball(1.0))
    unsure = seg.predict(_ball(0.27))
    assert sure.confidence is not None and unsure.confidence is not None
    # same mask, different certainty: only the score tells them apart
    assert np.array_equal(sure.labels.array, unsure.labels.array)
    assert sure.confidence.score > 0.95 and not sure.confidence.low
    assert unsure.confidence.score < 0.8 and unsure.confidence.low
    assert "low confidence" in unsure.confidence.message and "lesion" in unsure.confidence.message
    assert sure.probabilities is None  # computed for the score, not returned unasked


def test_no_threshold_no_probabilities_no_score() -> None:
    seg = _segmenter(None)
    assert seg.predict(_ball(1.0)).confidence is None
    pred = seg.predict(_ball(1.0), return_probabilities=True)
    assert pred.confidence is not None and pred.confidence.threshold is None
    assert case_confidence(pred).score == pytest.approx(pred.confidence.score)
    with pytest.raises(ModelError, match="return_probabilities"):
        case_confidence(seg.predict(_ball(1.0)))


def test_removed_or_missed_foreground_lowers_the_score() -> None:
    p = np.zeros((2, 30, 30), np.float32)
    p[0] = 1.0
    p[:, 5:15, 5:15] = [[[0.05]], [[0.95]]]
    p[:, 20:28, 20:28] = [[[0.05]], [[0.95]]]  # a second confident blob
    both = (p[1] > 0.5).astype(np.uint8)
    one = both.copy()
    one[20:28, 20:28] = 0  # clean-up kept the largest only
    assert confidence_of(p, one).score < confidence_of(p, both).score - 0.15
    empty = np.zeros_like(both)
    assert confidence_of(np.stack([np.ones((30, 30)), np.zeros((30, 30))]), empty).score == 1.0
    assert rank_least_confident([("b", 0.9), ("a", 0.3)])[0] == ("a", 0.3)


def test_batch_record_and_summary_carry_the_confidence(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_nifti(_ball(1.0), inputs / "sure.nii.gz")
    write_nifti(_ball(0.27), inputs / "unsure.nii.gz")
    out = tmp_path / "out"
    summary = run_batch([inputs], "threshold", out, formats=["nifti"],
                        segmenter=_segmenter(0.8))
    assert summary.ok
    records = {r.case_id: r for r in summary.records}
    assert records["sure"].confidence["low"] is False
    assert records["unsure"].confidence["low"] is True
    assert records["unsure"].warnings[-1].startswith("low confidence")
    on_disk = json.loads((out / "unsure.json").read_text())
    assert on_disk["confidence"]["score"] < 0.8
    rows = {r["case_id"]: r for r in json.loads((out / "_summary.json").read_text())["records"]}
    assert rows["unsure"]["low_confidence"] is True and rows["sure"]["low_confidence"] is False
