"""``evaluate_folders`` and ``medseg-evaluate folders`` on label maps written to disk."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli.evaluate import app
from medseg.errors import DatasetError
from medseg.metrics import evaluate_folders, summarize


def _write(folder: Path, name: str, array: np.ndarray, offset: float = 0.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    affine[0, 3] = offset
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), folder / f"{name}.nii.gz")


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:15, 5:15, 5:15] = 1
    label[8:12, 8:12, 8:12] = 2
    pred = label.copy()
    pred[5:15, 5:15, 14] = 0  # one 10x10 slab of class 1 missed (class 2 lies in 8:12)
    _write(tmp_path / "labels", "a", label)
    _write(tmp_path / "preds", "a", pred)
    _write(tmp_path / "labels", "b", label)
    _write(tmp_path / "preds", "b", label)
    return tmp_path / "preds", tmp_path / "labels"


def test_scores_match_hand_counts(folders: tuple[Path, Path]) -> None:
    scores = evaluate_folders(*folders)
    assert [s.case_id for s in scores] == ["a", "b"]
    n1 = 10 * 10 * 10 - 4 * 4 * 4  # class-1 voxels in the label
    assert scores[0].dice[1] == pytest.approx(2 * (n1 - 100) / (2 * n1 - 100))
    assert scores[0].dice[2] == 1.0 and scores[1].dice[1] == 1.0
    assert scores[1].hd95[1] == 0.0
    summary = summarize(scores, {1: "outer", 2: "inner"})
    assert summary["labels"]["inner"]["dice_mean"] == 1.0


def test_cli_prints_and_writes_json(folders: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["folders", str(folders[0]), str(folders[1]), "--labels", "1,2",
                                   "--json", str(out), "--csv", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert "2 case(s)" in res.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["num_cases"] == 2
    assert (tmp_path / "s.csv").read_text().splitlines()[0].startswith("case_id,dice_1,dice_2")


def test_missing_prediction_and_grid_mismatch(folders: tuple[Path, Path]) -> None:
    preds, labels = folders
    (preds / "b.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case b: no prediction in .*1 label\(s\) without"):
        evaluate_folders(preds, labels)
    _write(preds, "b", np.zeros((20, 20, 20)), offset=3.0)
    with pytest.raises(DatasetError, match="case b: prediction and label grids differ"):
        evaluate_folders(preds, labels)
    res = CliRunner().invoke(app, ["folders", str(preds), str(labels)])
    assert res.exit_code == 2 and "case b: prediction and label grids differ" in res.output
