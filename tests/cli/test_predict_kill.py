"""Kill medseg-predict (SIGKILL) in the middle of a batch, then resume: nothing finished is
lost, nothing partial is ever visible, and the resumed run completes every case."""

from __future__ import annotations

import json
import os
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


def _check_visible_outputs_complete(out: Path) -> set[str]:
    """Every visible output file is complete; returns the finished case ids."""
    finished = set()
    for record_file in out.glob("*.json"):
        if record_file.name.startswith("_"):
            continue
        record = json.loads(record_file.read_text())  # a record is never half-written
        assert record["status"] == "ok"
        assert (out / record["outputs"]["nifti"]).is_file()  # outputs precede their record
        finished.add(record["case_id"])
    for nifti in out.glob("*.nii.gz"):
        data = np.asanyarray(nib.load(str(nifti)).dataobj)  # fully decompressible
        assert data.shape == (24, 24, 24)
    return finished


@pytest.mark.slow
def test_sigkill_mid_batch_then_resume(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = plan_network(spatial_dims=3, in_channels=1, out_channels=3, patch_size=[16] * 3,
                          base_filters=4, max_filters=8)
    card = ModelCard(name="kill", network=config, label_names={0: "bg", 1: "a", 2: "b"},
                     roi_size=[16] * 3, normalization=NormalizationConfig(scheme="zscore"))
    model = save_model(tmp_path / "kill.safetensors", build_network(config), card)
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
