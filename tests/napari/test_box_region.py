"""Segment inside a box: the box a Shapes layer draws, in the image's voxels, and
a run limited to it that lands on the whole image's grid."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Shapes

from medseg.errors import GeometryError
from medseg.io.image import ImageMeta, MedImage
from napari_plugin._geometry import image_layer_data
from napari_plugin._run import REGION_KEY, box_from_shapes


def _image_layer(shape, meta) -> Image:
    (data, kwargs, _), = image_layer_data(MedImage(np.zeros((1, *shape), np.float32), meta),
                                          name="img")
    return Image(data, **kwargs)


def _world_rectangle(image: Image, corners_data: np.ndarray) -> np.ndarray:
    """Rectangle vertices drawn in world coordinates (a Shapes layer with no transform, as
    napari creates one over an image) from corners in the image's napari data coordinates."""
    return np.array([image.data_to_world(c) for c in corners_data])


def test_box_from_a_rectangle_on_one_slice_spans_all_slices() -> None:
    meta = ImageMeta(spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, 5.0),
                     direction=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    shape = (40, 30, 12)  # medseg (i, j, k); napari shows (k, j, i)
    image = _image_layer(shape, meta)
    k = 6  # the slice the user is on
    corners = np.array([[k, 5.0, 8.0], [k, 5.0, 20.4], [k, 17.6, 20.4], [k, 17.6, 8.0]])
    shapes = Shapes([_world_rectangle(image, corners)], shape_type="rectangle")
    box = box_from_shapes(shapes, image, shape)
    # voxel centres within the rectangle: i 8..20, j 5..17; every slice along k
    assert box == ((8, 21), (5, 18), (0, 12))


def test_box_from_shapes_through_an_oblique_grid_and_several_shapes() -> None:
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    meta = ImageMeta(spacing=(1.0, 1.0), origin=(3.0, -4.0), direction=((c, -s), (s, c)))
    shape = (50, 40)
    image = _image_layer(shape, meta)
    a = _world_rectangle(image, np.array([[10.0, 12.0], [10.0, 20.0], [18.0, 20.0],
                                          [18.0, 12.0]]))
    b = _world_rectangle(image, np.array([[25.0, 30.0], [25.0, 33.0], [27.0, 33.0],
                                          [27.0, 30.0]]))
    shapes = Shapes([a, b], shape_type="polygon")
    # the common bounding box, napari (row=j, column=i) -> medseg (i, j)
    assert box_from_shapes(shapes, image, shape) == ((12, 34), (10, 28))


def test_box_errors_are_clear() -> None:
    meta = ImageMeta.identity(2)
    image = _image_layer((20, 20), meta)
    with pytest.raises(GeometryError, match="empty"):
        box_from_shapes(Shapes(ndim=2, name="boxes"), image, (20, 20))
    far = Shapes([np.array([[100.0, 100.0], [100.0, 120.0], [120.0, 120.0], [120.0, 100.0]])])
    with pytest.raises(GeometryError, match="misses the image"):
        box_from_shapes(far, image, (20, 20))
    with pytest.raises(GeometryError, match="axes"):
        box_from_shapes(Shapes(ndim=3, data=[np.zeros((4, 3))]), image, (20, 20))


@pytest.mark.gui
def test_segment_inside_a_drawn_box(segment, qtbot) -> None:
    """The Segment widget's region entry: the run is limited to the rectangle, the result
    covers the whole image's grid with nothing outside the box, and records the box."""
    from napari_plugin._segment_widget import WHOLE_IMAGE

    viewer, widget = segment
    meta = ImageMeta(spacing=(1.0, 1.2, 1.5), origin=(5.0, -7.5, 12.0),
                     direction=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    shape = (30, 28, 20)
    array = np.random.default_rng(3).normal(size=(1, *shape)).astype(np.float32)
    (data, kwargs, _), = image_layer_data(MedImage(array, meta), name="mr")
    layer = viewer.add_image(data, **kwargs)
    corners = np.array([[10, 4.0, 6.0], [10, 4.0, 21.0], [10, 19.0, 21.0], [10, 19.0, 6.0]])
    viewer.add_shapes([_world_rectangle(layer, corners)], shape_type="rectangle",
                      name="hippocampus box")
    assert widget.region.choices == (WHOLE_IMAGE, "hippocampus box")
    widget.image_box.value = layer
    widget.region.value = "hippocampus box"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert widget.status.value == "done: mr [medseg tiny]", widget.status.value
    result = viewer.layers["mr [medseg tiny]"]
    assert result.metadata[REGION_KEY] == [[6, 22], [4, 20], [0, 20]]
    assert result.data.shape == (20, 28, 30)  # the whole image, napari order (k, j, i)
    inside = np.zeros(result.data.shape, bool)
    inside[:, 4:20, 6:22] = True
    assert np.count_nonzero(result.data[~inside]) == 0
    assert np.count_nonzero(result.data[inside]) > 0  # the random model labels something
    np.testing.assert_allclose(result.scale, layer.scale)
    np.testing.assert_allclose(result.translate, layer.translate)
