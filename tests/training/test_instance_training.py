"""An instance run end to end: ``medseg-train`` with ``data.instance_targets: centre`` on
tiny instance-id PNGs, exported, and the card's method run by the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.evaluate import app as evaluate_app
from medseg.cli.train import app as train_app
from medseg.inference import Segmenter
from medseg.io import read_image
from medseg.model_card import read_model_card


def _write_touching_discs(root: Path, n: int) -> None:
    """``n`` 48x56 grey PNGs of two touching bright discs, with uint16 instance-id masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:48, :56]
    rng = np.random.default_rng(0)
    for i in range(n):
        r, c = 20 + i % 5, 16 + i % 4
        ids = np.zeros((48, 56), np.uint16)
        ids[(yy - r) ** 2 + (xx - c) ** 2 <= 81] = 1
        ids[((yy - r) ** 2 + (xx - c - 17) ** 2 <= 81) & (ids == 0)] = 2
        image = np.where(ids > 0, 180, 30) + rng.normal(0, 8, ids.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(ids).save(root / "masks" / f"{i}.png")


def test_centre_run_exports_a_four_class_card_the_engine_turns_into_objects(tmp_path) -> None:
    data = tmp_path / "discs"
    _write_touching_discs(data, 6)
    config = {
        "name": "discs-centre", "output_dir": str(tmp_path / "run"), "seed": 1,
        "data": {"source": "folder2d", "path": str(data), "image_dir": "images",
                 "label_dir": "masks", "instance_targets": "centre", "val_cases": ["4", "5"]},
        "patch_size": [32, 32], "batch_size": 2, "base_filters": 4, "epochs": 1,
        "iters_per_epoch": 2, "val_every": 1, "amp": "off", "device": "cpu", "num_threads": 1,
    }
    cfg = tmp_path / "centre.yaml"
    cfg.write_text(yaml.safe_dump(config))
    export = tmp_path / "discs-centre.safetensors"
    res = CliRunner().invoke(train_app, ["--config", str(cfg), "-q", "--export", str(export)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[: res.output.rindex("}") + 1])
    assert report["iterations"] == 2
    # validated on the four classes the targets were made of (the centre class included)
    assert sorted(report["best_metrics"]["val_dice"]) == ["1", "2", "3"]
    card = read_model_card(export)
    assert card.label_names == {0: "background", 1: "interior", 2: "boundary", 3: "centre"}
    assert card.network.out_channels == 4
    assert card.instances == {"method": "centre"}

    prediction = Segmenter.from_file(export, device="cpu").predict(
        read_image(data / "images" / "0.png"))
    assert prediction.instances
    ids = prediction.labels.array
    assert ids.dtype in (np.uint16, np.uint32) and ids.shape == (1, 56, 48)  # (C, x, y)
    assert prediction.num_objects == int(ids.max())

    # medseg-evaluate model scores an instance model's objects (ids read as ids, not classes)
    out_json = tmp_path / "eval.json"
    res = CliRunner().invoke(evaluate_app, [
        "model", str(export), "--data", str(data), "--source", "folder2d", "--image-dir",
        "images", "--label-dir", "masks", "--device", "cpu", "--json", str(out_json),
        "--save-predictions", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    assert "AP@0.5 pooled" in res.output
    report = json.loads(out_json.read_text())
    assert report["cases"] == ["4", "5"] and report["summary"]["n_true"] == 4  # 2 discs each
    assert [r["case_id"] for r in report["per_image"]] == ["4", "5"]
    assert sum(r["n_pred"] for r in report["per_image"]) == report["summary"]["n_pred"]
    import tifffile

    saved = tifffile.imread(tmp_path / "pred" / "4.tif")
    assert saved.shape == (48, 56) and saved.dtype == np.uint16  # rows x columns, ids kept
