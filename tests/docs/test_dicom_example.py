"""The worked DICOM example of docs/train.md: workflows/dicom-example.yaml trains (one step) on
synthetic DICOM series with NIfTI label maps laid out as the page shows, through the same
commands the README gives, and the exported model segments a DICOM study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from doc_checks import REPO_ROOT
from typer.testing import CliRunner

from medseg.cli.predict import app as predict_app
from medseg.cli.train import app as train_app
from medseg.io import read_image, write_dicom_series, write_nifti
from medseg.io.image import ImageMeta, MedImage
from medseg.training import load_config


def _write_cases(root: Path, n: int) -> None:
    """``root/patientNNN/image/*.dcm`` + ``label.nii.gz``: a bright ball (label 1) in noise."""
    rng = np.random.default_rng(0)
    grid = np.indices((24, 24, 10)).astype(np.float32)
    for i in range(n):
        centre = np.array([12 + i % 3, 11, 5])[:, None, None, None]
        ball = ((grid - centre) ** 2 / np.array([25, 25, 4])[:, None, None, None]).sum(0) < 1
        image = (ball * 300 + rng.normal(100, 20, ball.shape)).astype(np.int16)
        meta = ImageMeta(spacing=(0.9, 0.9, 2.5), origin=(-10.0, 20.0, 30.0 + i),
                         direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
        case = root / f"patient{i:03d}"
        write_dicom_series(MedImage(image[None], meta), case / "image", modality="MR")
        series = read_image(case / "image")
        write_nifti(series.with_array(ball[None].astype(np.uint8)), case / "label.nii.gz")


def test_dicom_example_trains_and_its_model_segments(tmp_path: Path) -> None:
    data = tmp_path / "my_dicom_cases"
    _write_cases(data, 4)
    config = REPO_ROOT / "workflows" / "dicom-example.yaml"
    assert load_config(config).data.source == "dicom"
    export = tmp_path / "my-model.safetensors"
    quick = [f"data.path={data}", f"output_dir={tmp_path / 'run'}", "epochs=1",
             "iters_per_epoch=1", "val_every=1", "patch_size=[16,16,8]", "batch_size=1",
             "base_filters=4", "max_levels=3", "amp='off'", "device=cpu", "num_threads=1",
             "time_budget_min=null"]
    args = ["--config", str(config), "--export", str(export), "-q"]
    for item in quick:
        args += ["--set", item]
    result = CliRunner().invoke(train_app, args)
    assert result.exit_code == 0, result.output
    assert export.is_file() and (tmp_path / "run" / "plan.json").is_file()

    out = tmp_path / "results"
    result = CliRunner().invoke(predict_app, ["--model", str(export), "--output", str(out),
                                              "--device", "cpu", "-q",
                                              str(data / "patient000" / "image")])
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "_summary.json"]
    assert len(records) == 1 and records[0]["status"] == "ok"
    assert records[0]["input"]["format"] == "dicom"
    labels = read_image(out / records[0]["outputs"]["nifti"])
    assert labels.spatial_shape == (24, 24, 10)
    np.testing.assert_allclose(labels.meta.spacing, (0.9, 0.9, 2.5), atol=1e-4)
