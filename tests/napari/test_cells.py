"""Cells in napari (under Xvfb): a 2D TIFF/PNG opens as rows x columns, an instance result lists
its objects with areas in px^2 (never mL), jumps to one, and saves as a TIFF that lines up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.io import read_image
from medseg.samples import nuclei_samples
from napari_plugin._layers import INSTANCES_KEY, labels_layer_data
from napari_plugin._reader import get_reader
from napari_plugin._review_widget import ReviewWidget
from napari_plugin._sample_data import make_sample_nuclei

pytestmark = pytest.mark.gui


def _png(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 30 x 50 (rows x columns) RGBA PNG with equal colour channels and two bright blobs."""
    grey = np.zeros((30, 50), np.uint8)
    grey[3:9, 5:12] = 200  # object 1: 6 x 7 px near the top-left
    grey[20:25, 30:48] = 150  # object 2: 5 x 18 px
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    path = tmp_path / "cells.png"
    Image.fromarray(rgba).save(path)
    return path, grey


def test_reader_opens_a_png_as_one_grey_layer_in_rows_x_columns(make_napari_viewer,
                                                                tmp_path: Path) -> None:
    path, grey = _png(tmp_path)
    assert get_reader(str(path)) is not None
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="medseg")
    assert layer.data.shape == (30, 50)
    np.testing.assert_array_equal(layer.data, grey)


def test_sample_nuclei_is_a_real_grey_image() -> None:
    (data, kwargs, kind), = make_sample_nuclei()
    image_path, _ = nuclei_samples()[0]
    pixels = np.asarray(Image.open(image_path))
    assert kind == "image" and data.shape == pixels.shape[:2]
    np.testing.assert_array_equal(data, pixels[..., 0])


def test_instance_result_lists_objects_in_px2_jumps_and_saves_a_tiff(make_napari_viewer,
                                                                     tmp_path: Path) -> None:
    path, grey = _png(tmp_path)
    viewer = make_napari_viewer()
    (image_layer,) = viewer.open(str(path), plugin="medseg")
    image = read_image(path)
    ids = np.zeros(image.array.shape[1:], np.uint16)  # medseg order (x = column, y = row)
    ids[5:12, 3:9] = 1
    ids[30:48, 20:25] = 2
    data, kwargs, _ = labels_layer_data(image.with_array(ids[None]), name="cells",
                                        label_names={}, source_layer=image_layer.name,
                                        instances=True)
    layer = viewer.add_labels(data, **kwargs)
    assert layer.metadata[INSTANCES_KEY] is True
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.layer_box.value = layer
    assert widget.measures_title.value == "2 objects, 132 px^2 in all"
    assert "mL" not in widget.measures_title.value and len(widget.rows) == 0
    table = widget.measures.value
    assert list(table["columns"][:2]) == ["id", "area"]
    assert [r[1] for r in table["data"]] == [42.0, 90.0]
    assert [r[2:4] for r in table["data"]] == [[5.5, 8.0], [22.0, 38.5]]  # (row, column)
    widget.jump_to_item(2)
    np.testing.assert_allclose(viewer.camera.center[-2:], (22.0, 38.5))
    widget.save_path.value = tmp_path / "cells_labels.tif"
    widget.save_button.clicked.emit()
    assert widget.status.value == "saved cells_labels.tif", widget.status.value
    back = tifffile.imread(tmp_path / "cells_labels.tif")
    assert back.shape == grey.shape and back.dtype == np.uint16
    np.testing.assert_array_equal(back > 0, grey > 0)  # lines up with the image's pixels


def test_a_2d_class_map_reports_areas_not_millilitres(make_napari_viewer, tmp_path: Path
                                                      ) -> None:
    path, grey = _png(tmp_path)
    viewer = make_napari_viewer()
    image = read_image(path)
    labels = (image.array[:1] > 0).astype(np.uint8)
    data, kwargs, _ = labels_layer_data(image.with_array(labels), name="mask",
                                        label_names={1: "cell"})
    layer = viewer.add_labels(data, **kwargs)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.layer_box.value = layer
    assert widget.total.value == "total 132 px^2"
    assert widget.rows[0].volume.value == "132 px^2"
