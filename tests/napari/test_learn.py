"""The learning loop's logic without a viewer: corrections into a training folder, the fit
banner in plain words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels
from PIL import Image as PILImage

from medseg.errors import GeometryError
from medseg.inference.options import InferenceOptions
from napari_plugin._layers import labels_layer_data
from napari_plugin._learn import (
    add_correction,
    capture_correction,
    plain_fit_banner,
    training_folder_summary,
)
from napari_plugin._reader import read_layers
from napari_plugin._run import EngineOptions, SegmenterCache, capture_request, run_request


def _rgb_png(folder: Path, name: str = "slide_04.png") -> Path:
    rgba = np.random.default_rng(5).integers(0, 255, (30, 41, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    path = folder / name
    PILImage.fromarray(rgba, mode="RGBA").save(path)
    return path


def _result_on(image_layer: Image, labels_rc: np.ndarray) -> Labels:
    """A medseg result layer (object ids) tied to an image layer, from (rows, cols) ids."""
    from napari_plugin._run import layer_image

    image = layer_image(image_layer)
    data, kwargs, _ = labels_layer_data(image.with_array(labels_rc.T[None]), name="result",
                                        label_names={}, source_layer=image_layer.name,
                                        model="nuclei", instances=True)
    return Labels(data, **kwargs)


def test_a_corrected_result_goes_into_the_training_folder_aligned(tmp_path: Path) -> None:
    png = _rgb_png(tmp_path)
    (data, kwargs, _), = read_layers(str(png))
    image_layer = Image(data, **kwargs)
    ids = np.zeros((30, 41), np.uint16)
    ids[3:8, 30:39] = 1
    result = _result_on(image_layer, ids)
    result.data[20:26, 2:6] = 700  # the reviewer paints a missed nucleus (id above 255)

    correction = capture_correction(result, [image_layer])
    assert correction.stem == "slide_04" and correction.instances
    line = add_correction(tmp_path / "train", correction)
    assert line == "added slide_04 in train/ (1 image with masks)"
    with PILImage.open(tmp_path / "train" / "images" / "slide_04.png") as im:
        np.testing.assert_array_equal(np.asarray(im), data)
    with PILImage.open(tmp_path / "train" / "masks" / "slide_04.png") as im:
        mask = np.asarray(im)
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, result.data)
    # corrected again: the mask is replaced, the folder still holds one image
    result.data[20:26, 2:6] = 0
    assert add_correction(tmp_path / "train", capture_correction(result, [image_layer])) == (
        "replaced the mask of slide_04 in train/ (1 image with masks)")
    assert training_folder_summary(tmp_path / "train") == "1 image with masks"


def test_a_hand_painted_layer_finds_its_image_by_shape(tmp_path: Path) -> None:
    image_layer = Image(np.zeros((12, 9), np.float32), name="em")
    other = Image(np.zeros((5, 5), np.float32), name="small")
    painted = Labels(np.zeros((12, 9), np.uint8), name="Labels")
    painted.data[2:4, 2:4] = 1
    correction = capture_correction(painted, [other, image_layer])
    assert correction.image_layer == "em" and correction.stem == "em"
    assert not correction.instances and correction.labels.spatial_shape == (9, 12)
    twin = Image(np.zeros((12, 9), np.float32), name="em copy")
    with pytest.raises(GeometryError, match="2 image layers of the shape"):
        capture_correction(painted, [image_layer, twin])


def test_a_result_whose_image_was_closed_is_refused(tmp_path: Path) -> None:
    image_layer = Image(np.zeros((12, 9), np.uint8), name="gone")
    result = _result_on(image_layer, np.zeros((12, 9), np.uint16))
    with pytest.raises(GeometryError, match="'gone' .* is no longer open"):
        capture_correction(result, [])


def _prediction(path: Path):
    (data, kwargs, _), = read_layers(str(path))
    options = EngineOptions(model="nuclei", inference=InferenceOptions(device="cpu"))
    return run_request(capture_request(Image(data, **kwargs), options), SegmenterCache())


def test_the_fit_banner_says_in_words_that_an_he_image_is_another_kind(
        shared_data: Path) -> None:
    png = sorted((shared_data / "dsb2018_brightfield" / "images").glob("*.png"))[0]
    banner = plain_fit_banner(_prediction(png))
    assert banner.level == "warn" and banner.offer_finetune
    assert banner.text.startswith("These images look different from what this model was "
                                  "trained on (brighter background, dark objects: a stained "
                                  "or brightfield image?). Results may be poor.")
    assert "p25" in banner.detail and "p25" not in banner.text  # figures in the tooltip only


def test_a_fluorescence_image_gets_no_offer(shared_data: Path) -> None:
    png = sorted((shared_data / "dsb2018_nuclei" / "images").glob("*.png"))[0]
    banner = plain_fit_banner(_prediction(png))
    assert not banner.offer_finetune and banner.text == banner.detail
