"""Kill medseg-predict (SIGKILL) in the middle of a batch, then resume: nothing finished is
lost, nothing partial is ever visible, the run summary on disk always accounts for the records
beside it, and the resumed run completes every case, redoing none that finished."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.io import ImageMeta, MedImage, write_nifti
from medseg.io.atomic import TMP_PREFIX
from medseg.model_card import ModelCard, NormalizationConfig, save_model
from medseg.networks import build_network, plan_network

N_CASES = 6


def _command(model: Path, inputs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "medseg.cli.predict", "-m", str(model), "-o", str(out),
            "--device", "cpu", "--quiet", "--log-json", str(out.parent / "log.jsonl"),
            str(inputs)]


def _save_kill_model(path: Path) -> Path:
    torch.manual_seed(0)
    config = plan_network(spatial_dims=3, in_channels=1, out_channels=3, patch_size=[16] * 3,
                          base_filters=4, max_filters=8)
    card = ModelCard(name="kill", network=config, label_names={0: "bg", 1: "a", 2: "b"},
                     roi_size=[16] * 3, normalization=NormalizationConfig(scheme="zscore"))
    return save_model(path, build_network(config), card)


def _records(out: Path) -> list[Path]:
    """The case records in ``out``: not the run's own files (``_summary.json``), and not a
    temporary a kill left between its write and its rename (pathlib's glob matches dot-files)."""
    return [p for p in out.glob("*.json")
            if not p.name.startswith("_") and not p.name.startswith(TMP_PREFIX)]


def _check_visible_outputs_complete(out: Path, shape: tuple[int, ...] = (24, 24, 24)
                                    ) -> set[str]:
    """Every visible output file is complete; returns the finished case ids."""
    finished = set()
    for record_file in _records(out):
        record = json.loads(record_file.read_text())  # a record is never half-written
        assert record["status"] == "ok"
        assert (out / record["outputs"]["nifti"]).is_file()  # outputs precede their record
        finished.add(record["case_id"])
    for nifti in out.glob("*.nii.gz"):
        if nifti.name.startswith(TMP_PREFIX):  # a temporary a kill cut short: hidden, and
            continue                           # removed by the next run (checked at the end)
        data = np.asanyarray(nib.load(str(nifti)).dataobj)  # fully decompressible
        assert data.shape == shape
    return finished


@pytest.mark.slow
def test_sigkill_mid_batch_then_resume(tmp_path: Path) -> None:
    model = _save_kill_model(tmp_path / "kill.safetensors")
    inputs, out = tmp_path / "in", tmp_path / "out"
    for i in range(N_CASES):
        array = np.random.default_rng(i).normal(size=(1, 24, 24, 24)).astype("f4")
        write_nifti(MedImage(array, ImageMeta.identity(3)), inputs / f"case{i}.nii.gz")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(_command(model, inputs, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not [p for p in out.glob("case*.json")] and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.02)
    time.sleep(0.1)  # land somewhere inside the next case
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = _check_visible_outputs_complete(out)
    assert 1 <= len(done_before) < N_CASES, "the kill must land mid-batch"

    resumed = subprocess.run(_command(model, inputs, out), env=env, capture_output=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    done_after = _check_visible_outputs_complete(out)
    assert done_after == {f"case{i}" for i in range(N_CASES)}
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["already_done"] == len(done_before)
    assert summary["completed"] == N_CASES - len(done_before)


def _check_summary_matches_records(out: Path) -> dict:
    """The summary parses, and its counts are those of the records beside it: the finished
    records on disk are the already-done cases, the ok cases it lists, and perhaps cases it
    lists as running (killed between a case's record and the next summary)."""
    summary = json.loads((out / "_summary.json").read_text())
    ok_on_disk = {p.stem for p in _records(out)}
    failed_on_disk = {p.stem for p in _records(out / "_failed")}
    listed_ok = {r["case_id"] for r in summary["records"] if r["status"] == "ok"}
    running = set(summary["running"])
    assert summary["completed"] == len(listed_ok) and listed_ok <= ok_on_disk
    assert set(summary["failed"]) <= failed_on_disk
    assert len(ok_on_disk) == (summary["already_done"] + summary["completed"]
                               + len(running & ok_on_disk)), summary
    assert summary["total"] == (summary["already_done"] + summary["completed"]
                                + len(summary["failed"]) + summary["pending"] + len(running))
    return summary


@pytest.mark.slow
def test_the_summary_survives_ten_kills_at_random_moments(tmp_path: Path) -> None:
    """30 cases (two of them damaged), SIGKILL 10 times at random moments, then a run to the
    end: after every kill ``_summary.json`` parses and matches the records on disk; no case
    that finished is ever predicted again."""
    model = _save_kill_model(tmp_path / "kill.safetensors")
    inputs, out = tmp_path / "in", tmp_path / "out"
    for i in range(28):
        array = np.random.default_rng(i).normal(size=(1, 16, 16, 16)).astype("f4")
        write_nifti(MedImage(array, ImageMeta.identity(3)), inputs / f"case{i:02d}.nii.gz")
    for name in ("damaged_a", "damaged_b"):
        (inputs / f"{name}.nii.gz").write_bytes(b"")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    states = []
    for kill in range(10):
        proc = subprocess.Popen(_command(model, inputs, out), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill == 0:  # from the first summary on: before it, there is no run to account for
            deadline = time.monotonic() + 120
            while not (out / "_summary.json").exists() and time.monotonic() < deadline:
                assert proc.poll() is None
                time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        states.append(_check_summary_matches_records(out)["state"])
        _check_visible_outputs_complete(out, (16, 16, 16))
    assert "running" in states  # killed mid-run at least once, not only between runs

    final = subprocess.run(_command(model, inputs, out), env=env, capture_output=True,
                           timeout=300)
    assert final.returncode == 1, final.stderr.decode()  # the two damaged cases
    assert b"Traceback" not in final.stderr
    summary = _check_summary_matches_records(out)
    assert summary["state"] == "finished" and summary["running"] == []
    assert summary["already_done"] + summary["completed"] == 28
    assert set(summary["failed"]) == {"damaged_a", "damaged_b"}
    assert _check_visible_outputs_complete(out, (16, 16, 16)) == {f"case{i:02d}"
                                                                    for i in range(28)}
    events = []
    for line in (out.parent / "log.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line a kill cut short
            events.append(json.loads(line))
    finished = [e["case_id"] for e in events if e["event"] == "case_finished"]
    assert len(finished) >= 28 - summary["completed"]
    assert sorted(finished) == sorted(set(finished))  # resume redid no finished case
