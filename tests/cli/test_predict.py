"""medseg-predict as users script it: exit codes, JSON-lines log, quiet mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli.predict import app
from medseg.io import ImageMeta, MedImage, write_nifti
from medseg.model_card import ModelCard, NormalizationConfig, save_model
from medseg.networks import build_network, plan_network


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = plan_network(spatial_dims=3, in_channels=1, out_channels=2, patch_size=[16] * 3,
                          base_filters=4, max_filters=8)
    card = ModelCard(name="cli-tiny", network=config, label_names={0: "bg", 1: "fg"},
                     roi_size=[16] * 3, normalization=NormalizationConfig(scheme="zscore"))
    return save_model(tmp_path_factory.mktemp("m") / "cli-tiny.safetensors",
                      build_network(config), card)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for i in range(2):
        array = np.random.default_rng(i).normal(size=(1, 18, 17, 16)).astype("f4")
        write_nifti(MedImage(array, ImageMeta.identity(3)), root / f"c{i}.nii.gz")
    return root


def test_success_exit_0_with_json_lines_log(model_file: Path, inputs: Path,
                                            tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    result = CliRunner().invoke(app, ["-m", str(model_file), "-o", str(tmp_path / "out"),
                                      "--device", "cpu", "--log-json", str(log), str(inputs)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["run_started", "case_finished", "case_finished",
                                            "run_finished"]
    assert {e["case_id"] for e in events[1:3]} == {"c0", "c1"}
    assert all(e["outputs"]["nifti"].endswith(".nii.gz") for e in events[1:3])
    assert "2 case(s): 2 done, 0 already done, 0 failed" in result.stderr


def test_any_failed_case_gives_exit_1_and_log_to_stdout(model_file: Path, inputs: Path,
                                                        tmp_path: Path) -> None:
    (inputs / "zero.nii.gz").write_bytes(b"")
    result = CliRunner().invoke(app, ["-m", str(model_file), "-o", str(tmp_path / "out"),
                                      "--device", "cpu", "--log-json", "-", "--quiet",
                                      str(inputs)])
    assert result.exit_code == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    failed = [e for e in events if e["event"] == "case_failed"]
    assert len(failed) == 1 and failed[0]["case_id"] == "zero"
    assert failed[0]["error"] == f"{inputs / 'zero.nii.gz'} is an empty (zero-byte) file"
    assert events[-1]["failed"] == 1 and events[-1]["completed"] == 2
    assert result.stderr == ""  # --quiet: no bar, no summary


def test_unknown_model_or_format_gives_exit_2(inputs: Path, tmp_path: Path,
                                              model_file: Path) -> None:
    result = CliRunner().invoke(app, ["-m", "no-such-model", "-o", str(tmp_path / "o"),
                                      str(inputs)])
    assert result.exit_code == 2
    assert "error: unknown model name: 'no-such-model'" in result.stderr
    result = CliRunner().invoke(app, ["-m", str(model_file), "-o", str(tmp_path / "o"),
                                      "-f", "gif", str(inputs)])
    assert result.exit_code == 2
    assert "unknown output format(s) ['gif']; choose from nifti, dicom-seg" in result.stderr


def _patch_ds_value(path: Path, tag: bytes, text: bytes) -> None:
    """Overwrite a DS value in an explicit-VR little-endian file with ``text`` (padded to the
    value's own length), as a damaged or hand-edited file would carry it."""
    data = bytearray(path.read_bytes())
    at = data.find(tag + b"DS")
    assert at > 0, f"tag {tag!r} not found in {path}"
    length = int.from_bytes(data[at + 6:at + 8], "little")
    data[at + 8:at + 8 + length] = text.ljust(length)[:length]
    path.write_bytes(bytes(data))


def test_damaged_dicom_folders_fail_alone_with_one_line_reasons(model_file: Path, inputs: Path,
                                                                tmp_path: Path) -> None:
    from medseg.io import write_dicom_series

    volume = MedImage(np.random.default_rng(5).normal(size=(1, 18, 17, 16)).astype("f4") * 100,
                      ImageMeta.identity(3))
    for name in ("good", "zero", "orientation", "position"):
        files = write_dicom_series(volume, inputs / name, series_number=1)
        if name == "zero":
            (inputs / name / "zero.dcm").write_bytes(b"")
        elif name == "orientation":  # ImageOrientationPatient 1\abc\0\0\1\0
            _patch_ds_value(files[3], b"\x20\x00\x37\x00", b"1\\abc\\0\\0\\1\\0")
        elif name == "position":
            _patch_ds_value(files[0], b"\x20\x00\x32\x00", b"x\\0\\0")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["-m", str(model_file), "-o", str(out), "--device", "cpu",
                                      "--quiet", str(inputs)])
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["completed"] == 3  # c0, c1 and the good series
    assert {r["case_id"] for r in summary["records"] if r["status"] == "ok"} == {"c0", "c1",
                                                                                "good"}
    assert set(summary["failed"]) == {"zero", "orientation", "position"}
    for case, reason in summary["failed"].items():
        assert "\n" not in reason and "Traceback" not in reason, (case, reason)
    assert "empty (zero-byte)" in summary["failed"]["zero"]
    assert "unreadable header value" in summary["failed"]["orientation"]
    assert "unreadable header value" in summary["failed"]["position"]
    assert "Traceback" not in result.output
