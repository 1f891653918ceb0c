"""Lesion-wise scoring of the demo: detection, false positives, volumes, grid checks."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.demo.evaluate import evaluate_lesions
from medseg.demo.run import prepare_output
from medseg.errors import ConfigError, GeometryError
from medseg.io.image import ImageMeta, MedImage

META = ImageMeta(spacing=(0.5, 0.8, 2.0), origin=(-10.0, 20.0, -33.5),
                 direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
NAMES = {1: "liver", 2: "lesion"}


def _maps() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((1, 33, 34, 35), np.uint8)
    truth[0, 1:30, 1:30, 1:30] = 1
    truth[0, 3:9, 3:9, 3:9] = 2  # lesion A: 216 voxels, found
    truth[0, 20:24, 20:24, 20:24] = 2  # lesion B: 64 voxels, missed
    pred = truth.copy()
    pred[0, 20:24, 20:24, 20:24] = 1
    pred[0, 3:9, 3:9, 3:5] = 1  # A under-segmented: 144 of 216 voxels found
    pred[0, 12:14, 3:5, 3:5] = 2  # a false positive of 8 voxels, apart from A
    return pred, truth


def test_counts_detection_false_positives_and_volumes():
    pred, truth = _maps()
    ev = evaluate_lesions(MedImage(pred, META), MedImage(truth, META), lesion_label=2,
                          label_names=NAMES)
    voxel_ml = 0.5 * 0.8 * 2.0 / 1000.0
    assert ev.detected == 1 and len(ev.lesions) == 2 and ev.false_positives == 1
    a, b = ev.lesions
    assert a.detected and not b.detected
    assert a.true_ml == pytest.approx(216 * voxel_ml) and a.predicted_ml == pytest.approx(
        144 * voxel_ml)
    assert a.dice == pytest.approx(2 * 144 / (216 + 144))
    assert b.predicted_ml == 0.0 and b.dice == 0.0
    assert ev.false_positive_ml == pytest.approx(8 * voxel_ml)
    assert ev.true_total_ml == pytest.approx(280 * voxel_ml)
    assert ev.predicted_total_ml == pytest.approx(152 * voxel_ml)
    assert ev.dice["lesion"] == pytest.approx(2 * 144 / (280 + 152))
    # centroid of lesion A (indices 3..8 -> 5.5) in world mm
    assert a.centre_mm == pytest.approx((-10.0 + 5.5 * 0.5, 20.0 + 5.5 * 0.8, -33.5 + 5.5 * 2.0))
    assert ev.to_dict()["detected"] == 1


def test_different_grids_are_refused():
    pred, truth = _maps()
    shifted = META.replace(origin=(-10.0, 20.0, -33.0))
    with pytest.raises(GeometryError, match=r"differs from the truth grid"):
        evaluate_lesions(MedImage(pred, shifted), MedImage(truth, META), lesion_label=2,
                         label_names=NAMES)


def test_output_folder_of_someone_else_is_never_cleared(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match=rf"{tmp_path} is not empty and was not made by "
                                          r"`medseg demo`"):
        prepare_output(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_previous_demo_outputs_are_replaced_but_other_files_kept(tmp_path):
    out = tmp_path / "demo"
    prepare_output(out)
    (out / "predictions").mkdir()
    (out / "predictions" / "old.nii.gz").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    prepare_output(out)
    assert not (out / "predictions").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_training_set_is_an_msd_dataset_the_trainer_indexes(tmp_path):
    import nibabel as nib

    from medseg.demo.model import TRAIN_SEED_OFFSET, TrainingRecipe, write_training_set
    from medseg.demo.synthetic import make_ct_study
    from medseg.training import index_dataset

    recipe = TrainingRecipe(cases=3, shape=(48, 44, 12), val_slices=8, spacing=(8.0, 8.0, 10.0),
                            lesions_per_case=1)
    root = write_training_set(tmp_path / "ds", recipe, seed=2)
    index = index_dataset("msd", root)
    assert [p.case_id for p in index.pairs] == ["synthetic_000", "synthetic_001", "synthetic_002"]
    assert index.label_names == {0: "background", 1: "liver", 2: "lesion"}
    assert index.modality == "CT"
    assert nib.load(index.pairs[-1].image).shape == (48, 44, 8)  # the thin validation slab
    # the training volumes are the generator's, seeded apart from the study seeds
    expected = make_ct_study((48, 44, 12), (8.0, 8.0, 10.0), n_lesions=1,
                             seed=TRAIN_SEED_OFFSET + 2000 + 1)
    got = np.asarray(nib.load(index.pairs[1].label).dataobj)
    np.testing.assert_array_equal(got, expected.label.array[0])
