"""The time limit per case: past it a case is cancelled through the engine's cancel path,
recorded as failed with the reason, and the batch goes on; memory comes back."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import ThresholdNet, threshold_card

from medseg.errors import ConfigError
from medseg.inference.batch import DEFAULT_CASE_TIMEOUT_S, BatchOptions, run_batch
from medseg.inference.engine import Segmenter
from medseg.io import ImageMeta, MedImage, write_nifti


class SlowNet(ThresholdNet):
    """The threshold network, 10 ms a window: a 64^3 volume (512 windows) takes 5 s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.01)
        return super().forward(x)


def _write(path: Path, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    write_nifti(MedImage(array, ImageMeta.identity(3)), path)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_case_past_its_time_limit_is_cancelled_recorded_and_the_batch_goes_on(
        tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _write(inputs / "a_small.nii.gz", (16, 16, 16))  # one window
    _write(inputs / "b_slow.nii.gz", (64, 64, 64))
    _write(inputs / "c_small.nii.gz", (16, 16, 16))
    engine = Segmenter(SlowNet(), threshold_card(roi=[16, 16, 16]), device="cpu")
    t = time.perf_counter()
    summary = run_batch([inputs], "slow", out, segmenter=engine, case_timeout_s=1.0)
    assert time.perf_counter() - t < 4.0  # not the 5 s the slow case would take
    assert summary.completed == 2 and list(summary.failed) == ["b_slow"]
    record = json.loads((out / "_failed" / "b_slow.json").read_text())
    assert record["error_type"] == "CaseTimeout"
    assert "over the time limit per case of 1 s" in record["error"]
    assert "--case-timeout" in record["error"] and "\n" not in record["error"]
    assert record["work"]["windows"] == 8 ** 3  # what the guard estimated, kept
    assert record["timings_s"]["total"] < 3.0
    on_disk = json.loads((out / "_summary.json").read_text())
    assert on_disk["case_timeout_s"] == 1.0 and on_disk["state"] == "finished"
    again = run_batch([inputs], "slow", out, segmenter=engine, case_timeout_s=None)
    assert again.ok and again.completed == 1 and again.already_done == 2  # redone, no limit


def test_memory_does_not_grow_over_several_timeouts(tmp_path: Path) -> None:
    """Eight cases of 112^3 (7 MB each, plus the engine's buffers) cancelled mid-run: the
    resident memory after the last is what it was after the second."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    for i in range(8):
        _write(inputs / f"case{i}.nii.gz", (112, 112, 112))
    engine = Segmenter(SlowNet(), threshold_card(roi=[16, 16, 16]), device="cpu")
    rss: list[float] = []
    summary = run_batch([inputs], "slow", out, segmenter=engine, case_timeout_s=0.5,
                        on_event=lambda e: rss.append(_rss_mb())
                        if e["event"] == "case_failed" else None)
    assert len(summary.failed) == 8
    assert all("over the time limit" in reason for reason in summary.failed.values())
    growth = rss[-1] - rss[1]
    assert growth < 8.0, f"RSS after each timeout (MB): {[round(v) for v in rss]}"


def test_the_default_limit_is_finite_and_validated() -> None:
    assert BatchOptions().case_timeout_s == DEFAULT_CASE_TIMEOUT_S == 1800.0
    assert BatchOptions(case_timeout_s=None).case_timeout_s is None
    for bad in (0, -5, float("inf"), True):
        with pytest.raises(ConfigError, match="case timeout must be a positive number"):
            BatchOptions(case_timeout_s=bad)
