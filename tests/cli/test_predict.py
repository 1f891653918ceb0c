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


def test_windows_flag_reaches_every_record(model_file: Path, inputs: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["-m", str(model_file), "-o", str(out), "--device", "cpu",
                                      "--windows", "-q", str(inputs)])
    assert result.exit_code == 0, result.output
    for case in ("c0", "c1"):
        record = json.loads((out / f"{case}.json").read_text())
        assert record["provenance"]["inference_options"]["whole_image"] is False


def test_the_compute_guard_and_the_time_limit_from_the_command_line(tmp_path: Path) -> None:
    """A model trained on 24 mm cubes: a 160 mm cube (about 300x its windows) is refused with
    the ways out; with a higher --max-work or --force it runs, and --case-timeout stops it."""
    torch.manual_seed(0)
    config = plan_network(spatial_dims=3, in_channels=1, out_channels=2, patch_size=[16] * 3,
                          base_filters=4, max_filters=8)
    card = ModelCard(name="cli-guarded", network=config, label_names={0: "bg", 1: "fg"},
                     roi_size=[16] * 3, normalization=NormalizationConfig(scheme="zscore"),
                     domain={"unit": "mm", "extent": {"min": [24.0] * 3, "max": [24.0] * 3},
                             "spacing": {"min": [1.0] * 3, "max": [1.0] * 3}})
    model = save_model(tmp_path / "guarded.safetensors", build_network(config), card)
    inputs = tmp_path / "in"
    write_nifti(MedImage(np.zeros((1, 20, 20, 20), "f4"), ImageMeta.identity(3)),
                inputs / "small.nii.gz")
    write_nifti(MedImage(np.zeros((1, 160, 160, 160), "f4"), ImageMeta.identity(3)),
                inputs / "big.nii.gz")

    def run(out: str, *options: str) -> str:
        result = CliRunner().invoke(app, ["-m", str(model), "-o", str(tmp_path / out),
                                          "--device", "cpu", *options, str(inputs)])
        assert result.exit_code == 1, result.output
        assert "1 done, 0 already done, 1 failed" in result.stderr
        (line,) = [s for s in result.stderr.splitlines() if s.startswith("failed big: ")]
        return line

    refused = run("default")
    assert "refused before running: 8,000 windows of 16x16x16" in refused
    assert "--force" in refused and "--max-work" in refused
    for options in (["--max-work", "1000"], ["--force"]):
        # the small case takes well under a second, the big one (8,000 windows) a minute
        line = run("-".join(options), *options, "--case-timeout", "5", "--threads", "1")
        assert "over the time limit per case of 5 s" in line, line
    record = json.loads((tmp_path / "--force" / "_failed" / "big.json").read_text())
    assert record["error_type"] == "CaseTimeout" and record["work"]["forced"]
