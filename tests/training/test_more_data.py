"""Several data folders in one run (``data.more``), cross-validation folds (``data.folds``),
and the LGG FLAIR equivalence: a patient's TIFF slice folder (training) and the same patient
as a FLAIR NIfTI volume (how unseen patients arrive) give the network the same input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from medseg.errors import ConfigError, DatasetError
from medseg.inference.engine import Segmenter
from medseg.inference.preprocess import window_normalizer
from medseg.io import read_image
from medseg.training.config import TrainConfig, load_config
from medseg.training.dataset import load_raw_case, prepare_case
from medseg.training.records import fold_of_cases
from medseg.training.sources import index_data

REPO = Path(__file__).resolve().parents[2]


def _write_patient(root: Path, name: str, volume: np.ndarray, mask: np.ndarray) -> None:
    """``volume`` (row, column, slice, 3) as numbered RGB TIFF slices + 0/255 masks."""
    folder = root / name
    folder.mkdir(parents=True)
    for k in range(volume.shape[2]):
        tifffile.imwrite(folder / f"{name}_{k + 1}.tif", volume[:, :, k], photometric="rgb")
        tifffile.imwrite(folder / f"{name}_{k + 1}_mask.tif", mask[:, :, k] * 255)


def _write_msd(root: Path, name: str, flair: np.ndarray, mask: np.ndarray) -> None:
    """FLAIR NIfTI exactly as the dataset's SOURCE.txt builds held-back patients."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    nib.save(nib.Nifti1Image(flair, np.eye(4)), root / "imagesTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(
        '{"labels": {"0": "background", "1": "flair_abnormality"}, "modality": {"0": "FLAIR"},'
        f' "training": [{{"image": "imagesTr/{name}.nii.gz", '
        f'"label": "labelsTr/{name}.nii.gz"}}]}}')


def _config(tiff_root: Path, msd_root: Path, **data: object) -> TrainConfig:
    return TrainConfig.from_dict({
        "name": "t", "spatial_dims": 2, "normalization": "percentile",
        "data": {"source": "slices", "path": str(tiff_root), "channels": [1],
                 "label_values": {0: 0, 255: 1}, "modality": "MR",
                 "label_names": {0: "background", 1: "flair_abnormality"},
                 "more": [{"source": "msd", "path": str(msd_root), "channels": [0],
                           "label_values": {0: 0, 1: 1}}], **data}})


def test_two_folders_one_run_same_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, (24, 20, 5, 3), dtype=np.uint8)  # not square: a transpose shows
    mask = (rng.random((24, 20, 5)) > 0.8).astype(np.uint8)
    _write_patient(tmp_path / "tiff", "P_1", vol, mask)
    _write_msd(tmp_path / "msd", "P_2", np.ascontiguousarray(vol[..., 1]), mask)
    cfg = _config(tmp_path / "tiff", tmp_path / "msd")
    index = index_data(cfg.data)
    assert [p.case_id for p in index.pairs] == ["P_1", "P_2"]
    prepared = []
    for pair in index.pairs:
        raw = load_raw_case(pair, label_values=cfg.data.label_values, num_classes=2,
                            channels=cfg.data.channels)
        prepared.append(prepare_case(raw, normalization=_percentile(), target_spacing=None,
                                     num_classes=2))
    a, b = prepared
    assert a.image.shape == b.image.shape == (1, 24, 20, 5)
    assert np.array_equal(a.image.numpy(), b.image.numpy())
    assert np.array_equal(a.label.numpy(), b.label.numpy())
    assert set(np.unique(a.label.numpy())) == {0, 1}


def test_more_data_duplicate_case_ids_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 256, (8, 8, 2, 3), dtype=np.uint8)
    mask = np.zeros((8, 8, 2), np.uint8)
    _write_patient(tmp_path / "tiff", "P_1", vol, mask)
    _write_msd(tmp_path / "msd", "P_1", np.ascontiguousarray(vol[..., 1]), mask)
    with pytest.raises(DatasetError, match="more than one data folder"):
        index_data(_config(tmp_path / "tiff", tmp_path / "msd").data)


def test_folds_cover_every_case_once_and_respect_groups() -> None:
    ids = [f"c{i}" for i in range(23)]
    groups = {i: f"g{int(i[1:]) // 3}" for i in ids}  # 8 groups of up to 3
    fold = fold_of_cases(ids, folds=5, seed=3, groups=groups)
    assert set(fold) == set(ids) and set(fold.values()) == set(range(5))
    for g in set(groups.values()):
        assert len({fold[i] for i in ids if groups[i] == g}) == 1  # a group never splits
    sizes = sorted(sum(1 for i in ids if fold[i] == k) for k in range(5))
    assert sizes[-1] - sizes[0] <= 3  # at most one group apart
    assert fold == fold_of_cases(ids, folds=5, seed=3, groups=groups)  # seeded
    with pytest.raises(DatasetError, match="need at least"):
        fold_of_cases(ids[:3], folds=5, seed=0)


def test_fold_options_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.fold"):
        _config(tmp_path, tmp_path, folds=5, fold=5)
    with pytest.raises(ConfigError, match="not both"):
        _config(tmp_path, tmp_path, folds=5, val_cases=["a"])
    with pytest.raises(ConfigError, match="unknown option"):
        TrainConfig.from_dict({"name": "t", "data": {
            "source": "msd", "path": ".", "more": [{"source": "msd", "path": ".", "chanels": 1}]}})


def _percentile():
    from medseg.model_card import NormalizationConfig

    return NormalizationConfig(scheme="percentile")


@pytest.mark.parametrize("nonzero", [False, True])
def test_lgg_tiff_patient_and_its_nifti_give_the_model_the_same_input(
        shared_data: Path, tmp_path: Path, nonzero: bool) -> None:
    """Training reads a patient's TIFF slices; the shipped model is judged on the same patient
    as a FLAIR NIfTI built as SOURCE.txt says. What the network sees must be identical, with the
    card's normalisation and with its statistics over the head alone (``percentile-nonzero``)."""
    cfg = load_config(REPO / "workflows" / "brain_tumour.yaml", overrides={
        "data.path": str(shared_data / "lgg_flair"),
        "data.more": [{"source": "msd", "path": str(shared_data / "lgg_flair_more"),
                       "channels": [0], "label_values": {0: 0, 1: 1}}]})
    pair = next(p for p in index_data(cfg.data).pairs if p.case_id == "TCGA_CS_4941_19960909")
    raw = load_raw_case(pair, label_values=cfg.data.label_values, num_classes=2,
                        channels=cfg.data.channels)
    seg = Segmenter.from_file("brain-flair-tumour")
    seg.card.normalization = dataclasses.replace(seg.card.normalization, nonzero=nonzero)
    trained = prepare_case(raw, normalization=seg.card.normalization, target_spacing=None,
                           num_classes=2)

    n = len(pair.image_slices)
    vol = np.stack([tifffile.imread(pair.image_slices[k])[:, :, 1] for k in range(n)], axis=-1)
    nifti = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), nifti)
    image = seg._adapt_input(read_image(nifti))
    seen = window_normalizer(image.array, seg.card.normalization)(image.array)
    assert seen.shape == tuple(trained.image.shape) == (1, 256, 256, n)
    np.testing.assert_allclose(seen, trained.image.numpy(), rtol=0, atol=1e-6)
    masks = np.stack([tifffile.imread(pair.label_slices[k]) for k in range(n)], axis=-1) > 0
    assert np.array_equal(trained.label.numpy()[0] > 0, masks)
