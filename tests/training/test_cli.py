"""``medseg-train`` and ``medseg-evaluate model`` end to end on a tiny 2D dataset."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from medseg.cli.evaluate import app as evaluate_app
from medseg.cli.train import app as train_app
from medseg.model_card import read_model_card


def test_train_then_evaluate_model(folder2d_dataset: Path, tmp_path: Path) -> None:
    config = {
        "name": "discs", "output_dir": str(tmp_path / "run"), "seed": 1,
        "data": {"source": "folder2d", "path": str(folder2d_dataset),
                 "label_values": {0: 1, 255: 0}, "label_names": {0: "background", 1: "disc"},
                 "modality": "EM", "val_cases": ["4", "5"]},
        "patch_size": [32, 32], "batch_size": 2, "base_filters": 4, "epochs": 2,
        "iters_per_epoch": 2, "val_every": 1, "amp": "off", "device": "cpu", "num_threads": 1,
    }
    cfg_path = tmp_path / "discs.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    export = tmp_path / "models" / "discs.safetensors"
    runner = CliRunner()
    res = runner.invoke(train_app, ["--config", str(cfg_path), "--set", "epochs=1", "-q",
                                    "--export", str(export)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[: res.output.rindex("}") + 1])
    assert report["iterations"] == 2  # --set epochs=1 overrode the file's 2
    card = read_model_card(export)
    assert card.training["split"]["val"] == ["4", "5"]
    assert card.training["config"]["data"]["label_values"] == {"0": 1, "255": 0}
    assert card.training["exported_from"]["path"].endswith("best.safetensors")
    assert json.loads(export.with_suffix(".json").read_text())["name"] == "discs"

    out_json = tmp_path / "eval.json"
    res = runner.invoke(evaluate_app, ["model", str(export), "--data", str(folder2d_dataset),
                                       "--source", "folder2d", "--em", "--device", "cpu",
                                       "--json", str(out_json),
                                       "--save-predictions", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    summary = json.loads(out_json.read_text())
    assert summary["cases"] == ["4", "5"]
    assert 0.0 <= summary["summary"]["pixel_error"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["4.png", "5.png"]


def test_train_cli_reports_config_errors(tmp_path: Path) -> None:
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text("name: x\ndata: {source: msd, path: nowhere}\nlearning_rate: 0.1\n")
    res = CliRunner().invoke(train_app, ["--config", str(cfg_path)])
    assert res.exit_code == 2
    assert "unknown option(s) ['learning_rate']" in res.output
