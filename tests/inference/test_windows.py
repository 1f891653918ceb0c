"""Window grids, reflection indices and lazy window reads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.inference.windows import (
    WindowReader,
    default_margin,
    index_runs,
    plan_windows,
    reflect_indices,
)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("pad", [0, 1, 5, 17])
def test_reflect_indices_match_numpy_reflect(size: int, pad: int) -> None:
    values = np.arange(size)
    mode = "reflect" if size > 1 else "edge"  # numpy cannot reflect a single voxel
    expected = np.pad(values, (pad, pad), mode=mode)
    got = values[reflect_indices(np.arange(-pad, size + pad), size)]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape,roi,overlap", [
    ((33, 34, 35), (16, 16, 16), 0.5),
    ((200, 512, 37), (128, 128, 64), 0.25),
    ((5, 70), (16, 32), 0.5),
    ((64,), (64,), 0.5),
])
def test_grid_is_regular_covers_and_gives_border_context(shape, roi, overlap) -> None:
    grid = plan_windows(shape, roi, overlap=overlap)
    for axis, (n, r) in enumerate(zip(shape, roi, strict=True)):
        starts = grid.starts[axis]
        step = max(1, int(r * (1 - overlap)))
        assert starts[0] == 0
        assert all(b - a == step for a, b in zip(starts, starts[1:], strict=False))
        assert starts[-1] + r == grid.padded_shape[axis]  # tiles the padded volume exactly
        before = grid.pad_before[axis]
        after = grid.padded_shape[axis] - n - before
        if n > r:  # the border gets at least the context interior voxels get
            assert min(before, after) >= default_margin(roi, overlap)[axis]
        else:  # one window centred on a small axis
            assert len(starts) == 1 and abs(before - after) <= 1


def test_slab_axis_keeps_the_band_small() -> None:
    grid = plan_windows((512, 512, 200), (128, 128, 128), overlap=0.5)
    assert grid.slab_axis in (0, 1)  # the band then spans 200-ish, not 512, along the third
    assert plan_windows((200, 200, 200), (64, 64, 64)).slab_axis == 2  # ties: last axis


def test_plan_rejects_bad_options_with_clear_messages() -> None:
    with pytest.raises(ConfigError, match=r"overlap must be in \[0, 1\), got 1.0"):
        plan_windows((10, 10), (4, 4), overlap=1.0)
    with pytest.raises(ConfigError, match="window size \\[4, 4\\] has 2 axes but the image "
                                          "has 3 spatial axes"):
        plan_windows((10, 10, 10), (4, 4))
    with pytest.raises(ConfigError, match="must be non-negative"):
        plan_windows((10, 10), (4, 4), margin=-1)


def test_window_reader_equals_padded_array_windows(rng: np.random.Generator) -> None:
    array = rng.integers(-1000, 2000, size=(2, 9, 20, 13)).astype(np.int16)
    grid = plan_windows(array.shape[1:], (8, 8, 16), overlap=0.5, margin=5)
    pad = [(0, 0)] + [(b, p - n - b) for b, p, n in
                      zip(grid.pad_before, grid.padded_shape, grid.shape, strict=True)]
    padded = np.pad(array, pad, mode="reflect").astype(np.float32)
    reader = WindowReader(array, grid)
    for corner in [(0, 0, 0), (grid.starts[0][-1], grid.starts[1][1], grid.starts[2][-1]),
                   (grid.starts[0][1], grid.starts[1][1], 0)]:
        window = reader.read(corner)
        sl = tuple(slice(c, c + r) for c, r in zip(corner, grid.roi_size, strict=True))
        assert window.dtype == np.float32
        np.testing.assert_array_equal(window, padded[(slice(None), *sl)])


@pytest.mark.parametrize("order", ["C", "F"])
def test_window_reader_mirrors_every_corner_of_either_memory_order(order: str) -> None:
    """Windows larger than the volume (reflected more than once) and at every corner equal
    numpy's reflect padding, for C- and Fortran-ordered (NIfTI) volumes."""
    rng = np.random.default_rng(21)
    array = np.asarray(rng.integers(-1000, 2000, size=(1, 6, 11, 9)).astype(np.int16),
                       order=order)
    grid = plan_windows(array.shape[1:], (16, 8, 12), overlap=0.5, margin=3)
    pad = [(0, 0)] + [(b, p - n - b) for b, p, n in
                      zip(grid.pad_before, grid.padded_shape, grid.shape, strict=True)]
    padded = np.pad(array, pad, mode="reflect").astype(np.float32)
    reader = WindowReader(array, grid)
    corners = 0
    for corner in itertools.product(*grid.starts):
        sl = tuple(slice(c, c + r) for c, r in zip(corner, grid.roi_size, strict=True))
        np.testing.assert_array_equal(reader.read(corner), padded[(slice(None), *sl)])
        corners += 1
    assert corners == grid.num_windows > 4


def test_index_runs_gather_like_take() -> None:
    rng = np.random.default_rng(22)
    for size, lo, length in [(5, -7, 20), (1, -2, 5), (9, 3, 4), (4, -3, 3)]:
        idx = reflect_indices(np.arange(lo, lo + length), size)
        values = rng.normal(size=size)
        out = np.empty(length)
        for dst, src in index_runs(idx):
            out[dst] = values[src]
        np.testing.assert_array_equal(out, values[idx])
