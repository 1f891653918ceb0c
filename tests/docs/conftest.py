"""Fixtures of the doc checks: a real batch run's records, a copy of the docs to plant errors in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from doc_checks import REPO_ROOT, record_keys


@pytest.fixture(scope="module")
def batch_record_keys(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every field name the batch runner writes, from a real run: a 2D instance model on a
    shipped nuclei image, a 3D model on a small synthetic volume (lesions, volumes), and a
    missing input (a failed record)."""
    from medseg.inference.batch import run_batch
    from medseg.io import write_nifti
    from medseg.io.image import ImageMeta, MedImage
    from medseg.samples import nuclei_samples

    tmp = tmp_path_factory.mktemp("records")
    grid = np.indices((35, 51, 35)).astype(np.float32)
    ball = ((grid - np.array([17, 25, 17])[:, None, None, None]) ** 2).sum(0) < 64
    volume = MedImage((ball * 200.0 + 50.0)[None].astype(np.float32),
                      ImageMeta(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                                direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))))
    write_nifti(volume, tmp / "in3d" / "head.nii.gz")
    image, _ = nuclei_samples()[0]
    keys: set[str] = set()
    for inputs, model, out in (([image], "nuclei", tmp / "out2d"),
                               ([tmp / "in3d", tmp / "absent.nii.gz"], "hippocampus",
                                tmp / "out3d")):
        run_batch([str(p) for p in inputs], model, out,
                  formats=["auto", "probabilities", "uncertainty"], device="cpu")
        for record in [*out.glob("*.json"), *(out / "_failed").glob("*.json")]:
            keys |= record_keys(json.loads(record.read_text()))
    assert {"lesions", "num_objects", "error", "fit", "records", "state"} <= keys
    return keys


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    """The docs, workflows and the modules whose text they quote, copied to a temporary root."""
    root = tmp_path / "tree"
    for rel in ("docs", "workflows"):
        shutil.copytree(REPO_ROOT / rel, root / rel)
    for rel in ("README.md", "napari_plugin/README.md", "napari_plugin/napari.yaml",
                "medseg/inference/fit.py", "medseg/inference/confidence.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, root / rel)
    return root
