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
