"""Instance training targets and the U-Net weight map, against independent computations.

The fixture is two digital discs of radius 8 (pixel centres within 8.5 of the centre) on a
40 x 60 canvas, centred on row 20 at columns 22 and 38 (16 px apart). They overlap on column 30
(rows 18..22), which goes to disc 2, so they touch along the vertical line between column 29
(disc 1: rows 16..24) and column 30 (disc 2: rows 18..22).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from medseg.training.instances import batch_weight_maps, instance_targets, unet_weight_map

H, W = 40, 60
SIGMA, W0 = 5.0, 10.0


def _two_touching_discs() -> np.ndarray:
    r, c = np.mgrid[0:H, 0:W]
    disc1 = (r - 20) ** 2 + (c - 22) ** 2 <= 8.5**2
    disc2 = (r - 20) ** 2 + (c - 38) ** 2 <= 8.5**2
    ids = np.zeros((H, W), np.int64)
    ids[disc1 & (c <= 29)] = 1
    ids[disc2 & (c >= 30)] = 2
    return ids


def _windows(a: np.ndarray) -> np.ndarray:
    """``(H, W, 3, 3)``: each pixel's 3x3 neighbourhood, the image edge replicated."""
    return sliding_window_view(np.pad(a, 1, mode="edge"), (3, 3))


def test_fixture_touches_along_a_vertical_line() -> None:
    ids = _two_touching_discs()
    assert np.flatnonzero(ids[:, 29] == 1).tolist() == list(range(16, 25))
    assert np.flatnonzero(ids[:, 30] == 2).tolist() == list(range(18, 23))
    assert not (ids[:, 30:] == 1).any() and not (ids[:, :30] == 2).any()


def test_boundary_targets() -> None:
    ids = _two_touching_discs()
    got = instance_targets(torch.from_numpy(ids)[None, None], "boundary")
    assert got.shape == (1, 1, H, W) and got.dtype == torch.int64
    got = got[0, 0].numpy()

    other_value_near = (_windows(ids) != ids[:, :, None, None]).any(axis=(2, 3))
    expected = np.where(ids > 0, np.where(other_value_near, 2, 1), 0)
    np.testing.assert_array_equal(got, expected)
    # spot checks: the disc tops touch background, the contact line touches the other disc
    assert got[12, 22] == 2 and got[20, 22] == 1 and got[0, 0] == 0
    assert got[20, 29] == 2 and got[20, 30] == 2 and got[20, 28] == 1 and got[20, 31] == 1
    assert set(np.unique(got).tolist()) == {0, 1, 2}


def test_centre_targets_mark_each_discs_deepest_half() -> None:
    """Centre (3) = interior pixels at least half as deep as their disc's deepest, depth
    being the distance to the nearest pixel outside the interior; computed here by brute
    force over pixel pairs."""
    ids = _two_touching_discs()
    got = instance_targets(torch.from_numpy(ids)[None, None], "centre")[0, 0].numpy()
    boundary = instance_targets(torch.from_numpy(ids)[None, None], "boundary")[0, 0].numpy()
    # classes 0 and 2 are the boundary mode's; the interior is split into 1 and 3
    np.testing.assert_array_equal(got == 0, boundary == 0)
    np.testing.assert_array_equal(got == 2, boundary == 2)
    np.testing.assert_array_equal((got == 1) | (got == 3), boundary == 1)
    interior = boundary == 1
    inside = np.argwhere(interior)
    outside = np.argwhere(~interior)
    depth = np.zeros((H, W))
    for r, c in inside:
        depth[r, c] = np.sqrt(((outside - (r, c)) ** 2).sum(1)).min()
    for disc in (1, 2):
        sel = interior & (ids == disc)
        expected = sel & (depth >= 0.5 * depth[sel].max())
        np.testing.assert_array_equal((got == 3) & (ids == disc), expected)
        assert expected.sum() >= 1
    # each disc's centre is one blob around its own middle, apart from the other's
    centres, n = ndimage.label(got == 3)
    assert n == 2
    assert got[20, 22] == 3 and got[20, 38] == 3 and got[20, 29] == 2


def test_gap_targets_remove_only_pixels_touching_the_other_object() -> None:
    ids = _two_touching_discs()
    got = instance_targets(torch.from_numpy(ids)[None, None], "gap")[0, 0].numpy()

    win = _windows(ids)
    other_object_near = ((win != ids[:, :, None, None]) & (win > 0)).any(axis=(2, 3))
    expected = ((ids > 0) & ~other_object_near).astype(np.int64)
    np.testing.assert_array_equal(got, expected)

    removed = {(int(r), int(c)) for r, c in np.argwhere((ids > 0) & (got == 0))}
    # disc 1, column 29, rows 17..23 (each has a disc-2 pixel of rows 18..22 diagonally or
    # beside it); disc 2, column 30, rows 18..22 (all beside disc 1)
    assert removed == {(r, 29) for r in range(17, 24)} | {(r, 30) for r in range(18, 23)}
    # pixels next to background only stay foreground
    assert got[12, 22] == 1 and got[16, 29] == 1 and got[24, 29] == 1 and got[20, 14] == 1
    assert got[20, 31] == 1


def test_gap_targets_in_3d_keep_objects_next_to_background() -> None:
    ids = torch.zeros(1, 1, 8, 8, 6, dtype=torch.long)
    ids[0, 0, 1:5, 1:3, 1:4] = 1  # 4 x 2 x 3 box
    ids[0, 0, 1:5, 3:6, 1:4] = 2  # 4 x 3 x 3 box touching it across the plane j = 2 | 3
    ids[0, 0, 7, 7, 5] = 3  # a lone voxel in the far corner: only background and the edge
    got = instance_targets(ids, "gap")[0, 0]
    expected = (ids[0, 0] > 0).long()
    expected[1:5, 2:4, 1:4] = 0  # the two touching planes, and nothing else
    torch.testing.assert_close(got, expected)

    boundary = instance_targets(ids, "boundary")[0, 0]
    assert boundary[7, 7, 5] == 2  # a background neighbour makes it a boundary voxel
    assert boundary[2, 1, 2] == 2 and boundary[2, 2, 2] == 2 and boundary[2, 3, 2] == 2
    # the only interior voxels: box 2's middle row (j = 4, k = 2) away from its i faces
    assert torch.nonzero(boundary == 1).tolist() == [[2, 4, 2], [3, 4, 2]]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown instance target mode"):
        instance_targets(torch.zeros(1, 1, 4, 4, dtype=torch.long), "edges")


def _class_weights(ids: np.ndarray) -> np.ndarray:
    return unet_weight_map(ids, w0=0.0, sigma=SIGMA)


def test_class_weights_balance_the_classes() -> None:
    ids = _two_touching_discs()
    wc = _class_weights(ids)
    fg = ids > 0
    n, n_fg = ids.size, int(fg.sum())
    # each class gets 1 / (2 * frequency): the background N / (2 (N - n_fg)), objects N / (2 n_fg)
    np.testing.assert_allclose(wc[~fg], n / (2 * (n - n_fg)), rtol=1e-6)
    np.testing.assert_allclose(wc[fg], n / (2 * n_fg), rtol=1e-6)
    # so both classes weigh N / 2 in total
    assert float(wc[~fg].sum(dtype=np.float64)) == pytest.approx(n / 2, rel=1e-5)
    assert float(wc[fg].sum(dtype=np.float64)) == pytest.approx(n / 2, rel=1e-5)


def test_unet_weight_map_matches_brute_force_distances() -> None:
    ids = _two_touching_discs()
    got = unet_weight_map(ids, w0=W0, sigma=SIGMA)
    assert got.shape == (H, W) and got.dtype == np.float32
    wc = _class_weights(ids)
    wc_bg = float(wc[0, 0])

    # brute force: the exact distance to each disc over the whole canvas
    dist1 = ndimage.distance_transform_edt(ids != 1)
    dist2 = ndimage.distance_transform_edt(ids != 2)
    d1, d2 = np.minimum(dist1, dist2), np.maximum(dist1, dist2)
    expected = wc + W0 * np.exp(-((d1 + d2) ** 2) / (2 * SIGMA**2))
    # the map widens each object's box by 4 sigma = 20 px: disc 1 spans columns 14..29 and
    # disc 2 columns 30..46, so columns 10..49 lie in both windows and are exact there
    np.testing.assert_allclose(got[:, 10:50], expected[:, 10:50], rtol=1e-5, atol=1e-5)
    # elsewhere the cut-off term is below w0 * exp(-8) ~ 3.4e-3 ... and in fact far smaller
    np.testing.assert_allclose(got, expected, atol=1e-3)

    # background pixel at the contact: (17, 30) is 1 px from disc 1 at (17, 29) and 1 px from
    # disc 2 at (18, 30): w = w_c + 10 exp(-4 / 50)
    assert ids[17, 30] == 0
    assert (dist1[17, 30], dist2[17, 30]) == (1.0, 1.0)
    assert got[17, 30] == pytest.approx(wc_bg + W0 * np.exp(-4 / 50), rel=1e-6)
    assert got[17, 30] > wc_bg + 9.0

    # a few more pixels near the discs, with their distances worked out by hand
    for r, c in [(17, 30), (15, 30), (20, 12), (20, 48), (8, 22), (30, 30)]:
        assert got[r, c] == pytest.approx(
            wc_bg + W0 * np.exp(-((dist1[r, c] + dist2[r, c]) ** 2) / 50), rel=1e-5)
    # (20, 12): 2 px left of disc 1 (column 14), 18 px left of disc 2 (column 30)
    assert (dist1[20, 12], dist2[20, 12]) == (2.0, 18.0)
    assert got[20, 12] == pytest.approx(wc_bg + W0 * np.exp(-400 / 50), rel=1e-5)

    # inside an object d1 = 0 and d2 is the distance to the other object
    assert got[20, 29] == pytest.approx(float(wc[20, 29]) + W0 * np.exp(-1 / 50), rel=1e-6)

    # at the corners d1 + d2 > 40 px: the term (< 10 exp(-32)) vanishes
    for r, c in [(0, 0), (H - 1, 0), (0, W - 1), (H - 1, W - 1)]:
        assert dist1[r, c] + dist2[r, c] > 40
        assert abs(float(got[r, c]) - wc_bg) < 1e-3


def test_unet_weight_map_of_one_object_has_no_separation_term() -> None:
    ids = np.zeros((20, 20), np.int64)
    ids[5:10, 5:10] = 4  # a single object (id 4: ids need not start at 1)
    got = unet_weight_map(ids, w0=W0, sigma=SIGMA)
    # no second object: d2 is infinite and the map is w_c alone (400 px, 25 of them object)
    np.testing.assert_allclose(got[ids == 0], 400 / (2 * 375), rtol=1e-6)
    np.testing.assert_allclose(got[ids > 0], 400 / (2 * 25), rtol=1e-6)


def test_batch_weight_maps_shape_and_values() -> None:
    ids = _two_touching_discs()
    single = np.zeros_like(ids)
    single[5:10, 5:10] = 1
    batch = torch.from_numpy(np.stack([ids, single]))[:, None]  # (2, 1, H, W)
    classes = instance_targets(batch, "gap")
    maps = batch_weight_maps(batch, classes, w0=W0, sigma=SIGMA)
    assert tuple(maps.shape) == (2, H, W)
    assert maps.dtype == torch.float32
    for b in range(2):
        expected = unet_weight_map(batch[b, 0].numpy(), w0=W0, sigma=SIGMA,
                                   classes=classes[b, 0].numpy())
        np.testing.assert_array_equal(maps[b].numpy(), expected)
    # with the gap classes, the 12 gap pixels count as background for w_c
    n_fg = int((classes[0, 0] == 1).sum())
    assert n_fg == int((ids > 0).sum()) - 12
    wc_bg = H * W / (2 * (H * W - n_fg))
    assert float(maps[0, 0, 0]) == pytest.approx(wc_bg, abs=1e-3)


def test_object_diameter_is_the_median_equivalent_diameter_of_all_training_objects() -> None:
    """Squares of 16, 100 and 400 px in one image and 64 px in another: the median area
    over the four objects is (64 + 100) / 2 = 82 px^2, an equivalent circle of diameter
    2 * sqrt(82 / pi) = 10.218 px; a 0.5-unit spacing makes the same objects 4x smaller."""
    from medseg.io import ImageMeta, MedImage
    from medseg.training.dataset import RawCase
    from medseg.training.domain import object_diameter

    def case(boxes: list[int], spacing: float) -> RawCase:
        ids = np.zeros((96, 32), np.uint16)
        for n, side in enumerate(boxes, start=1):
            ids[n * 3 + 20 * (n - 1): n * 3 + 20 * (n - 1) + side, 2:2 + side] = n
        meta = ImageMeta.identity(2).replace(spacing=(spacing, spacing))
        assert np.bincount(ids.ravel())[1:].tolist() == [side * side for side in boxes]
        return RawCase("c", MedImage(np.zeros((1, 96, 32), np.float32), meta),
                       MedImage(ids[None], meta))

    assert object_diameter([case([4, 10, 20], 1.0), case([8], 1.0)]) == \
        pytest.approx(2 * np.sqrt(82 / np.pi), abs=1e-3)
    assert object_diameter([case([4, 10, 20], 0.5), case([8], 0.5)]) == \
        pytest.approx(2 * np.sqrt(82 * 0.25 / np.pi), abs=1e-3)
    assert object_diameter([case([], 1.0)]) == 0.0
