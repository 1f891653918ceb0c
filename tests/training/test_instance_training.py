"""An instance run end to end: ``medseg-train`` with ``data.instance_targets: centre`` on
tiny instance-id PNGs, exported, and the card's method run by the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

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
    assert json.loads(res.output[: res.output.rindex("}") + 1])["iterations"] == 2
    card = read_model_card(export)
    assert card.label_names == {0: "background", 1: "interior", 2: "boundary", 3: "centre"}
    assert card.network.out_channels == 4
    assert card.instances == {"method": "centre"}

    prediction = Segmenter.from_file(export, device="cpu").predict(
        read_image(data / "images" / "0.png"))
    assert prediction.instances
    ids = prediction.labels.array
    assert ids.dtype in (np.uint16, np.uint32) and ids.shape == (1, 56, 48)  # (C, x, y)
    assert set(np.unique(ids).tolist()) == set(range(int(ids.max()) + 1))  # ids 0..N, no gaps
