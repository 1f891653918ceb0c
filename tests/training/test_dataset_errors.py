"""Each kind of bad dataset raises DatasetError naming the case (or folder) and the problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from training_data import write_folder2d, write_msd

from medseg.errors import DatasetError
from medseg.training.dataset import load_raw_case
from medseg.training.sources import index_dataset


def _load_all(root: Path, **kwargs: object) -> None:
    for pair in index_dataset("msd", root).pairs:
        load_raw_case(pair, **kwargs)  # type: ignore[arg-type]


def _rewrite_label(root: Path, case: str, array: np.ndarray, affine: np.ndarray | None = None
                   ) -> None:
    img = nib.load(root / "imagesTr" / f"{case}.nii.gz")
    nib.save(nib.Nifti1Image(array, img.affine if affine is None else affine),
             root / "labelsTr" / f"{case}.nii.gz")


def test_shape_mismatch(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "d", 2)
    _rewrite_label(root, "case_001", np.zeros((33, 34, 30), np.uint8))
    with pytest.raises(DatasetError, match=re.escape(
            "case case_001: label shape (33, 34, 30) differs from image shape (33, 34, 35)")):
        _load_all(root)


def test_geometry_mismatch(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "d", 2)
    affine = nib.load(root / "imagesTr" / "case_000.nii.gz").affine.copy()
    affine[0, 3] += 2.0  # label shifted 2 mm along x
    _rewrite_label(root, "case_000", np.zeros((33, 34, 35), np.uint8), affine)
    with pytest.raises(DatasetError, match=r"case case_000: label and image grids differ"):
        _load_all(root)


def test_label_value_outside_declared_classes(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "d", 2)
    label = np.zeros((33, 34, 35), np.uint8)
    label[5, 5, 5] = 7
    _rewrite_label(root, "case_001", label)
    with pytest.raises(DatasetError, match=re.escape(
            "case case_001: label values [7] are outside the declared classes 0..2")):
        _load_all(root, num_classes=3)


def test_label_values_not_in_mapping(tmp_path: Path) -> None:
    root = write_folder2d(tmp_path / "em", 2)
    pair = index_dataset("folder2d", root).pairs[0]
    with pytest.raises(DatasetError, match=re.escape(
            "case 0: label values [255] are not in label_values [0]")):
        load_raw_case(pair, label_values={0: 1})


def test_non_integer_labels(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "d", 1)
    _rewrite_label(root, "case_000", np.full((33, 34, 35), 0.5, np.float32))
    with pytest.raises(DatasetError, match="case case_000: label .* holds non-integer values"):
        _load_all(root)


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "em" / "image").mkdir(parents=True)
    (tmp_path / "em" / "label").mkdir()
    with pytest.raises(DatasetError, match=re.escape(
            f"folder {tmp_path / 'em' / 'image'} holds no image files (.png, .tif, .tiff)")):
        index_dataset("folder2d", tmp_path / "em")


def test_empty_msd_training_list(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DatasetError, match=re.escape(
            f"{tmp_path}: the dataset is empty (no image/label pairs found)")):
        index_dataset("msd", tmp_path)


def test_missing_dataset_json(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset.json"):
        index_dataset("msd", tmp_path)


def test_image_without_label_2d(tmp_path: Path) -> None:
    root = write_folder2d(tmp_path / "em", 3)
    (root / "label" / "1.png").unlink()
    with pytest.raises(DatasetError, match=re.escape("case 1: no label in")):
        index_dataset("folder2d", root)


def test_listed_file_missing(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "d", 2)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(DatasetError,
                       match=r"case case_001: label .*case_001.nii.gz does not exist"):
        index_dataset("msd", root)


def test_manifest_record_without_label(tmp_path: Path) -> None:
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("image,label\na.nii.gz,a_seg.nii.gz\nb.nii.gz,\n")
    with pytest.raises(DatasetError, match=re.escape(f"{manifest}: record 2 lacks 'image' and "
                                                     "'label'")):
        index_dataset("manifest", manifest)


def test_unreadable_image_names_the_case(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "d", 1)
    (root / "imagesTr" / "case_000.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(DatasetError, match=r"^case case_000: "):
        _load_all(root)
