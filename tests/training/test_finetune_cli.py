"""``medseg-train --from-model MODEL --data DIR --minutes N --export OUT.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_finetune import write_he_folder
from typer.testing import CliRunner

from medseg.cli.train import app
from medseg.model_card import read_model_card


def test_finetune_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(tmp_path / "my-models"))
    folder = write_he_folder(tmp_path / "corrections", 2)
    out = tmp_path / "he-nuclei.safetensors"
    res = CliRunner().invoke(app, [
        "--from-model", "nuclei", "--data", str(folder), "--minutes", "1", "--export",
        str(out), "-q", "--threads", "1", "--set", "time_budget_min=null", "--set", "epochs=1",
        "--set", "iters_per_epoch=2", "--set", "patch_size=[64, 64]", "--set", "amp='off'"])
    report = json.loads(res.output[: res.output.rindex("}") + 1])
    assert report["steps"] == 2 and report["metric"] == "AP@0.5 (pooled)"
    assert res.exit_code == (0 if report["improved"] else 1), res.output
    written = Path(report["model"])
    assert written == (out if report["improved"] else
                       tmp_path / "he-nuclei.candidate.safetensors")
    assert out.exists() == report["improved"]
    card = read_model_card(written)
    assert card.name == "he-nuclei"
    assert card.training["finetune"]["steps"] == 2
    assert "held-back image(s): base" in res.output


def test_finetune_cli_needs_data_and_one_mode(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["--from-model", "nuclei"])
    assert res.exit_code == 2 and "--from-model needs --data DIR" in res.output
    res = runner.invoke(app, ["--data", str(tmp_path)])
    assert res.exit_code == 2 and "give --config FILE (train) or --from-model" in res.output
    res = runner.invoke(app, ["--from-model", "nuclei", "--data", str(tmp_path)])
    assert res.exit_code == 2 and "no images/ folder" in res.output
