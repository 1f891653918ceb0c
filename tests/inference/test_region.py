"""Segmenting inside a box: the model runs on the box's voxels only and the result lands on
the whole image's grid (napari's "segment inside a box", the Python API's ``region=``)."""

from __future__ import annotations

import numpy as np
import pytest
from inference_helpers import ThresholdNet, ball_image, oblique_meta, threshold_card

from medseg.errors import GeometryError
from medseg.inference import Segmenter
from medseg.io import MedImage, read_image


@pytest.mark.parametrize("ndim", [2, 3])
def test_crop_keeps_every_voxel_at_its_world_position(ndim: int) -> None:
    meta = oblique_meta(ndim)
    shape = (21, 17, 12)[:ndim]
    image = MedImage(np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape), meta)
    box = ((3, 11), (5, 16), (2, 9))[:ndim]
    crop = image.crop(box)
    assert crop.spatial_shape == tuple(b - a for a, b in box)
    start = np.array([a for a, _ in box])
    local = np.argwhere(np.ones(crop.spatial_shape, bool))
    np.testing.assert_allclose(crop.meta.index_to_world(local),
                               meta.index_to_world(local + start), atol=1e-9)
    np.testing.assert_array_equal(
        crop.array, image.array[(slice(None), *(slice(a, b) for a, b in box))])


@pytest.mark.parametrize("ndim", [2, 3])
def test_region_result_is_the_crops_on_the_whole_grid(ndim: int) -> None:
    shape = (41, 37, 30)[:ndim]
    meta = oblique_meta(ndim)
    image, mask = ball_image(shape, meta)
    segmenter = Segmenter(ThresholdNet(), threshold_card(roi=[16] * ndim), device="cpu")
    box = ((10, 30), (8, 25), (5, 22))[:ndim]
    where = tuple(slice(a, b) for a, b in box)
    pred = segmenter.predict(image, region=box, return_probabilities=True)
    assert pred.labels.spatial_shape == shape
    assert pred.labels.meta.same_grid(meta, atol_mm=1e-9)
    assert pred.region == box
    labels = pred.labels.array[0]
    expected = np.zeros_like(mask)
    expected[where] = mask[where]
    np.testing.assert_array_equal(labels, expected)  # the ball inside the box, nothing outside
    direct = segmenter.predict(image.crop(box)).labels.array[0]
    np.testing.assert_array_equal(labels[where], direct)
    outside = np.ones(shape, bool)
    outside[where] = False
    p = pred.probabilities.array
    assert p.shape == (2, *shape)
    assert np.all(p[0][outside] == 1) and np.all(p[1][outside] == 0)  # certain background
    assert float(pred.uncertainty().array[0][outside].max()) == 0.0


@pytest.mark.parametrize("box", [((0, 5), (0, 5)), ((0, 50), (0, 5), (0, 5)),
                                 ((5, 5), (0, 5), (0, 5)), ((-1, 5), (0, 5), (0, 5))])
def test_region_outside_or_empty_is_a_clear_error(box) -> None:
    image, _ = ball_image((20, 20, 20), oblique_meta(3))
    segmenter = Segmenter(ThresholdNet(), threshold_card(roi=[16] * 3), device="cpu")
    with pytest.raises(GeometryError, match=r"box"):
        segmenter.predict(image, region=box)


def test_hippocampus_box_on_a_full_field_t2_series(shared_data) -> None:
    """The crop-trained hippocampus model on a whole-brain series: run whole, it scatters
    labels over the field of view; inside a box around the right medial temporal lobe the
    result stays inside the box, small and on the series' own grid."""
    series = shared_data / "hippocrop_dicom" / "Study3" / "37830-T2reg-78532"
    image = read_image(series)
    assert image.spatial_shape == (280, 320, 22)
    segmenter = Segmenter.from_file("hippocampus", device="cpu", overlap=0.0)  # CI time
    box = ((70, 130), (130, 210), (5, 10))
    where = tuple(slice(a, b) for a, b in box)
    whole = segmenter.predict(image).labels.array[0]
    inside_box = np.zeros(whole.shape, bool)
    inside_box[where] = True
    assert np.count_nonzero(whole[~inside_box]) > 1000  # whole: labels all over the field
    pred = segmenter.predict(image, region=box)
    labels = pred.labels.array[0]
    assert pred.labels.meta.same_grid(image.meta, atol_mm=1e-6)
    assert np.count_nonzero(labels[~inside_box]) == 0
    assert 0.1 < sum(pred.volumes_ml.values()) < 5.0  # a hippocampus-sized result, not 58 mL
    assert sum(pred.volumes_ml.values()) < 0.1 * (np.count_nonzero(whole) * np.prod(
        image.meta.spacing) / 1000)
    assert any(c.name == "spacing" for c in pred.fit.warnings)  # 6.5 mm slices: said so
