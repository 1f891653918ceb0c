"""The ``slices`` dataset layout (one folder of numbered 2D slices per patient) and grouped
validation splits.

Slice ``n`` of patient ``p`` is a 16 x 16 RGB TIFF whose red channel is ``10 * p + n``, green
``100 + n`` and blue ``200 + row``; its mask ``P<p>_<n>_mask.tif`` is 255 on row ``n`` (and 0
elsewhere). Ten slices per patient, so a text sort would put ``_10`` before ``_2``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from medseg.errors import DatasetError
from medseg.training.dataset import load_raw_case
from medseg.training.records import split_cases
from medseg.training.sources import index_dataset

N_SLICES = 10
SIZE = 16


def _slice_pixels(patient: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(SIZE)[:, None] * np.ones((1, SIZE), int)
    rgb = np.stack([np.full((SIZE, SIZE), 10 * patient + n), np.full((SIZE, SIZE), 100 + n),
                    200 + rows], axis=-1).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[n, :] = 255
    return rgb, mask


def _write_slices_dataset(root: Path) -> Path:
    for p in (1, 2, 3):
        folder = root / f"P{p}"
        folder.mkdir(parents=True)
        for n in range(1, N_SLICES + 1):
            rgb, mask = _slice_pixels(p, n)
            tifffile.imwrite(folder / f"P{p}_{n}.tif", rgb, photometric="rgb")
            tifffile.imwrite(folder / f"P{p}_{n}_mask.tif", mask)
    (root / "README.txt").write_text("not a case folder")
    return root


def test_slices_index_one_pair_per_patient_in_numeric_order(tmp_path: Path) -> None:
    root = _write_slices_dataset(tmp_path / "lgg")
    index = index_dataset("slices", root)
    assert [p.case_id for p in index.pairs] == ["P1", "P2", "P3"]
    for pair in index.pairs:
        case = pair.case_id
        assert pair.image == root / case and pair.label == root / case
        assert [f.name for f in pair.image_slices] == [
            f"{case}_{n}.tif" for n in range(1, N_SLICES + 1)]
        assert [f.name for f in pair.label_slices] == [
            f"{case}_{n}_mask.tif" for n in range(1, N_SLICES + 1)]
    # a text sort would have given 1, 10, 2, ...
    assert sorted(f.name for f in index.pairs[0].image_slices)[:3] == [
        "P1_1.tif", "P1_10.tif", "P1_2.tif"]


def test_slices_missing_mask_is_an_error(tmp_path: Path) -> None:
    root = _write_slices_dataset(tmp_path / "lgg")
    (root / "P3" / "P3_7_mask.tif").unlink()
    with pytest.raises(DatasetError, match=r"case P3: slice P3_7\.tif has no mask P3_7_mask\.tif"):
        index_dataset("slices", root)


def test_slices_gap_in_numbering_is_an_error(tmp_path: Path) -> None:
    root = _write_slices_dataset(tmp_path / "lgg")
    (root / "P2" / "P2_5.tif").unlink()
    (root / "P2" / "P2_5_mask.tif").unlink()
    with pytest.raises(DatasetError, match=r"case P2: slices \[5\] are missing"):
        index_dataset("slices", root)


def test_load_raw_case_stacks_slices_in_order(tmp_path: Path) -> None:
    root = _write_slices_dataset(tmp_path / "lgg")
    pair = index_dataset("slices", root).pairs[1]  # P2
    case = load_raw_case(pair, label_values={0: 0, 255: 1}, channels=[1])
    assert case.case_id == "P2"
    assert case.image.array.shape == (1, SIZE, SIZE, N_SLICES)
    assert case.label.array.shape == (1, SIZE, SIZE, N_SLICES)
    for k in range(1, N_SLICES + 1):
        # channel 1 (green) of slice k is 100 + k everywhere
        assert np.all(case.image.array[0, ..., k - 1] == 100 + k)
        expected = np.zeros((SIZE, SIZE), np.uint8)
        expected[k, :] = 1  # the mask's row k, 255 -> class 1
        np.testing.assert_array_equal(case.label.array[0, ..., k - 1], expected)
    assert case.label.array.dtype == np.uint8

    every = load_raw_case(pair, label_values={0: 0, 255: 1})
    assert every.image.array.shape == (3, SIZE, SIZE, N_SLICES)
    assert np.all(every.image.array[0, ..., 9] == 20 + 10)  # red: 10 * patient + slice
    # blue is 200 + row: axis 1 of the stack is the slice's rows
    np.testing.assert_array_equal(every.image.array[2, :, 0, 0], 200 + np.arange(SIZE))


def test_load_raw_case_refuses_a_missing_channel(tmp_path: Path) -> None:
    root = _write_slices_dataset(tmp_path / "lgg")
    pair = index_dataset("slices", root).pairs[0]
    with pytest.raises(DatasetError, match=r"data.channels \[3\]"):
        load_raw_case(pair, label_values={0: 0, 255: 1}, channels=[3])


GROUPS = {"a1": "A", "a2": "A",
          "b1": "B", "b2": "B", "b3": "B",
          "c1": "C", "c2": "C", "c3": "C", "c4": "C"}


@pytest.mark.parametrize("seed", range(8))
def test_grouped_split_never_splits_a_group(seed: int) -> None:
    ids = list(GROUPS)
    train, val = split_cases(ids, val_cases=None, val_fraction=0.34, seed=seed, groups=GROUPS)
    assert val, "the validation set is empty"
    assert train, "the training set is empty"
    assert sorted(train + val) == sorted(ids)
    assert not set(train) & set(val)
    val_groups = {GROUPS[c] for c in val}
    train_groups = {GROUPS[c] for c in train}
    assert not val_groups & train_groups, f"seed {seed}: a group is on both sides"
    # whole groups: the validation set is exactly the union of its groups
    assert sorted(val) == sorted(c for c in ids if GROUPS[c] in val_groups)
    # target round(9 * 0.34) = 3 cases: groups are drawn until at least 3 are in
    assert len(val) >= 3
    assert train == [c for c in ids if c not in val]  # training keeps the given order
    # the same seed gives the same split
    assert split_cases(ids, val_cases=None, val_fraction=0.34, seed=seed,
                       groups=GROUPS) == (train, val)


def test_grouped_split_depends_on_the_seed() -> None:
    ids = list(GROUPS)
    vals = {tuple(split_cases(ids, val_cases=None, val_fraction=0.34, seed=s,
                              groups=GROUPS)[1]) for s in range(20)}
    assert len(vals) > 1
