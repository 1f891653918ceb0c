"""Dataset sources: MSD layout, DICOM case folders, 2D folders and manifests index and load."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from training_data import sphere_case, write_folder2d

from medseg.io import ImageMeta, MedImage, read_image, write_dicom_series, write_nifti
from medseg.training.dataset import load_raw_case
from medseg.training.records import split_cases
from medseg.training.sources import index_dataset


def test_msd_index_reads_labels_and_modality(msd_dataset: Path) -> None:
    index = index_dataset("msd", msd_dataset)
    assert [p.case_id for p in index.pairs] == [f"case_{i:03d}" for i in range(5)]
    assert index.label_names == {0: "background", 1: "shell", 2: "core"}
    assert index.modality == "MR"
    case = load_raw_case(index.pairs[2], num_classes=3)
    _, expected = sphere_case((33, 34, 35), seed=2)
    np.testing.assert_array_equal(case.label.array[0], expected)
    # NIfTI RAS offset (-10, 5, 2.5) is LPS (10, -5, 2.5).
    np.testing.assert_allclose(case.image.meta.origin, (10.0, -5.0, 2.5), atol=1e-6)


def test_folder2d_maps_label_values(folder2d_dataset: Path) -> None:
    index = index_dataset("folder2d", folder2d_dataset)
    assert [p.case_id for p in index.pairs] == ["0", "1", "2", "3", "4", "5"]
    case = load_raw_case(index.pairs[0], label_values={0: 1, 255: 0}, num_classes=2)
    _, disc = sphere_case((48, 52), seed=100, radius=10.0)
    # PNG rows are the second ITK axis: read_image gives (i=cols, j=rows) = the array transposed.
    np.testing.assert_array_equal(case.label.array[0], (disc > 0).T.astype(np.uint8))


def test_manifest_csv_and_json(tmp_path: Path, msd_dataset: Path) -> None:
    rows = [f"imagesTr/case_00{i}.nii.gz,labelsTr/case_00{i}.nii.gz,subject{i}" for i in range(3)]
    csv_path = msd_dataset / "pairs.csv"
    csv_path.write_text("image,label,case_id\n" + "\n".join(rows) + "\n")
    pairs = index_dataset("manifest", csv_path).pairs
    assert [p.case_id for p in pairs] == ["subject0", "subject1", "subject2"]
    assert pairs[1].image == (msd_dataset / "imagesTr" / "case_001.nii.gz").resolve()
    json_path = msd_dataset / "pairs.json"
    json_path.write_text(json.dumps([{"image": "imagesTr/case_004.nii.gz",
                                      "label": "labelsTr/case_004.nii.gz"}]))
    (pair,) = index_dataset("manifest", json_path).pairs
    assert pair.case_id == "case_004"
    assert load_raw_case(pair).label.spatial_shape == (33, 34, 35)


def test_dicom_case_folders_with_nifti_labels(tmp_path: Path) -> None:
    root = tmp_path / "dicom_cases"
    direction = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))  # oblique-free but permuted
    for i in range(2):
        image, label = sphere_case((20, 22, 9), seed=i, radius=4.0)
        meta = ImageMeta(spacing=(0.8, 0.8, 2.5), origin=(-30.0, 12.0, 40.0 + i),
                         direction=direction)
        case = root / f"patient{i}"
        write_dicom_series(MedImage(image[None].astype(np.int16), meta), case / "image",
                           modality="MR")
        series = read_image(case / "image")
        write_nifti(series.with_array(label[None]), case / "label.nii.gz")
    index = index_dataset("dicom", root)
    assert [p.case_id for p in index.pairs] == ["patient0", "patient1"]
    raw = load_raw_case(index.pairs[1], num_classes=3)
    _, expected = sphere_case((20, 22, 9), seed=1, radius=4.0)
    np.testing.assert_array_equal(raw.label.array[0], expected)
    np.testing.assert_allclose(raw.image.meta.spacing, (0.8, 0.8, 2.5), atol=1e-4)
    assert nib.load(root / "patient1" / "label.nii.gz").shape == (20, 22, 9)


def test_seeded_split_is_stable_and_disjoint() -> None:
    ids = [f"c{i}" for i in range(50)]
    train_a, val_a = split_cases(ids, val_cases=None, val_fraction=0.2, seed=0)
    train_b, val_b = split_cases(ids, val_cases=None, val_fraction=0.2, seed=0)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 10 and not set(train_a) & set(val_a)
    assert split_cases(ids, val_cases=None, val_fraction=0.2, seed=1)[1] != val_a


def test_write_folder2d_helper_roundtrip(tmp_path: Path) -> None:
    root = write_folder2d(tmp_path / "x", 1)
    img = read_image(root / "image" / "0.png")
    assert img.spatial_shape == (52, 48)


def test_dicom_case_folder_with_dicom_seg_label(tmp_path: Path) -> None:
    from medseg.io import write_dicom_seg

    image, label = sphere_case((16, 18, 6), seed=4, radius=4.0)
    meta = ImageMeta(spacing=(0.9, 0.9, 3.0), origin=(5.0, -7.0, 20.0),
                     direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    case = tmp_path / "cases" / "p7"
    write_dicom_series(MedImage(image[None].astype(np.int16), meta), case / "image", modality="MR")
    series = read_image(case / "image")
    write_dicom_seg(series.with_array(label[None]), series, case / "seg.dcm",
                    label_names={1: "shell", 2: "core"})
    (pair,) = index_dataset("dicom", tmp_path / "cases").pairs
    assert pair.label_is_seg and pair.case_id == "p7"
    raw = load_raw_case(pair, num_classes=3)
    np.testing.assert_array_equal(raw.label.array[0], label)
