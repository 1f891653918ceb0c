"""The clean-up of label maps: the same result as labelling every component of the whole map."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.inference.postprocess import PostprocessConfig, clean_labels


def reference(labels: np.ndarray, spacing: tuple[float, ...],
              config: PostprocessConfig) -> np.ndarray:
    """The definition: every label's components over the whole map, kept by size / largest."""
    out = labels.copy()
    min_voxels = (int(math.ceil(config.min_size_ml / (math.prod(spacing) / 1000.0)))
                  if config.min_size_ml > 0 else 0)
    for value in np.unique(labels):
        if value == 0:
            continue
        components, n = ndimage.label(labels == value)
        sizes = ndimage.sum_labels(np.ones_like(components), components, range(n + 1))
        keep = sizes >= max(min_voxels, 1)
        keep[0] = False
        if config.keep_largest:
            keep &= np.arange(n + 1) == int(np.argmax(np.where(keep, sizes, -1)))
        out[(components > 0) & ~keep[components]] = 0
    return out


@pytest.mark.parametrize("shape", [(40, 50), (30, 40, 12)])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
@pytest.mark.parametrize("config", [PostprocessConfig(keep_largest=True),
                                    PostprocessConfig(min_size_ml=0.02),
                                    PostprocessConfig(keep_largest=True, min_size_ml=0.05)])
def test_clean_labels_matches_whole_map_labelling(shape, order, dtype, config) -> None:
    rng = np.random.default_rng(len(shape) * 7 + (order == "F"))
    spacing = (1.0,) * len(shape)
    # blobs of three labels in one corner region and scattered specks (boxes well inside the
    # map, so the bounding-box shortcut is exercised), plus an absent label value
    labels = np.zeros(shape, dtype=dtype, order=order)
    smooth = ndimage.gaussian_filter(rng.random(shape), 2.0)
    region = tuple(slice(s // 4, 3 * s // 4) for s in shape)
    labels[region] = np.digitize(smooth[region], np.quantile(smooth, [0.5, 0.7, 0.85]))
    specks = rng.random(shape) > 0.995
    labels[specks] = 2
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    expected = reference(labels, spacing, config)
    got = clean_labels(labels.copy(order="A"), spacing, config)
    assert got.dtype == labels.dtype
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, labels)  # the clean-up did remove something


def test_clean_labels_empty_and_inactive() -> None:
    empty = np.zeros((8, 8, 4), np.uint8)
    assert not clean_labels(empty, (1.0, 1.0, 1.0), PostprocessConfig(keep_largest=True)).any()
    lab = np.zeros((8, 8), np.uint8)
    lab[0, 0] = lab[5, 5] = 1
    assert clean_labels(lab.copy(), (1.0, 1.0), PostprocessConfig()).sum() == 2


def test_fill_holes_fills_enclosed_background_only_never_another_label() -> None:
    # a lesion (1) around a dark cavity, a second label (2) inside the cavity, and a bay open
    # to the outside, which is not a hole
    labels = np.zeros((12, 12), np.uint8)
    labels[2:10, 2:10] = 1
    labels[4:8, 4:8] = 0          # the cavity
    labels[5, 5] = 2              # another label inside it stays as it is
    labels[8:10, 2:4] = 0         # a bay in a corner: open to the outside
    filled = clean_labels(labels.copy(), (1.0, 1.0), PostprocessConfig(fill_holes=True))
    assert (filled[4:8, 4:8] > 0).all() and filled[5, 5] == 2
    assert (filled[4:8, 4:8] == 1).sum() == 15
    assert (filled[8:10, 2:4] == 0).all()  # the bay is not enclosed
    expected = labels.copy()
    holes = ndimage.binary_fill_holes(labels == 1) & (labels == 0)
    expected[holes] = 1
    np.testing.assert_array_equal(filled, expected)


def test_fill_holes_per_slice_or_in_the_volume() -> None:
    # a tube along the slice axis: closed in every slice, open at both ends of the volume
    labels = np.zeros((9, 9, 5), np.uint8, order="F")
    labels[2:7, 2:7, :] = 1
    labels[4, 4, :] = 0
    config = PostprocessConfig(fill_holes=True)
    in_3d = clean_labels(labels.copy(order="A"), (1.0, 1.0, 2.0), config)
    per_slice = clean_labels(labels.copy(order="A"), (1.0, 1.0, 2.0), config, per_slice=True)
    assert (in_3d[4, 4, :] == 0).all()  # open to the outside through the end slices
    assert (per_slice[4, 4, :] == 1).all()
    # closed at both ends, the cavity is a hole of the volume as well
    labels[:, :, 0] = labels[:, :, 4] = 1
    assert (clean_labels(labels.copy(), (1.0, 1.0, 2.0), config)[4, 4, :] == 1).all()


def test_fill_holes_after_keep_largest() -> None:
    # a ring and a small blob: the blob goes, the ring's hole is filled
    labels = np.zeros((20, 20), np.uint8)
    labels[2:9, 2:9] = 1
    labels[4:7, 4:7] = 0
    labels[15:17, 15:17] = 1
    out = clean_labels(labels, (1.0, 1.0), PostprocessConfig(keep_largest=True,
                                                              fill_holes=True))
    assert int(out.sum()) == 49 and out[5, 5] == 1 and out[15, 15] == 0
    assert PostprocessConfig(fill_holes=True).active
