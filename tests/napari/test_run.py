"""A segmentation run without Qt: capture, engine, result layer on the captured grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image
from scipy.spatial.transform import Rotation

from medseg.errors import GeometryError, ModelError
from medseg.inference import Segmenter
from medseg.inference.options import InferenceOptions
from medseg.io.image import ImageMeta, MedImage
from napari_plugin._geometry import META_KEY, image_layer_data
from napari_plugin._run import (
    EngineOptions,
    SegmenterCache,
    capture_request,
    result_layer_data,
    run_request,
)
from napari_plugin._segment_widget import CHECKPOINT_CHOICE, chosen_model

SHAPE = (21, 22, 23)  # 2 x 2 x 2 windows of 16^3 at overlap 0.25


def _oblique_image() -> MedImage:
    direction = Rotation.from_euler("xyz", [10, 5, -30], degrees=True).as_matrix()
    meta = ImageMeta(spacing=(1.0, 1.2, 1.5), origin=(5.0, -7.5, 12.0),
                     direction=tuple(map(tuple, direction)))
    array = np.random.default_rng(3).normal(size=(1, *SHAPE)).astype(np.float32)
    return MedImage(array, meta)


def test_run_places_labels_on_the_captured_grid(tiny_model: Path) -> None:
    image = _oblique_image()
    (data, kwargs, _), = image_layer_data(image, name="mr")
    layer = Image(data, **kwargs)
    options = EngineOptions(model=str(tiny_model),
                            inference=InferenceOptions(device="cpu", overlap=0.25))
    request = capture_request(layer, options)
    layer.data[:] = 0  # edits after capture must not change what is segmented
    done: list[tuple[int, int]] = []
    prediction = run_request(request, SegmenterCache(), progress=lambda d, t: done.append((d, t)))
    assert done[-1] == (8, 8)
    expected = Segmenter.from_file(tiny_model, device="cpu", overlap=0.25).predict(image)
    np.testing.assert_array_equal(prediction.labels.array, expected.labels.array)

    labels, lkw, kind = result_layer_data(request, prediction)
    assert kind == "labels" and lkw["name"] == "mr [medseg tiny]"
    np.testing.assert_array_equal(labels, expected.labels.array[0].T)
    np.testing.assert_allclose(lkw["affine"], kwargs["affine"])
    assert lkw["scale"] == kwargs["scale"] and lkw["translate"] == kwargs["translate"]
    assert ImageMeta.from_dict(lkw["metadata"][META_KEY]) == image.meta
    assert lkw["metadata"]["medseg_label_names"] == {"1": "anterior", "2": "posterior"}
    assert lkw["metadata"]["medseg_source_layer"] == "mr"
    assert lkw["colormap"].color_dict[1][:3] == pytest.approx((1.0, 0.0, 0.0))


def test_a_plain_numpy_layer_is_segmented_at_its_scale() -> None:
    layer = Image(np.zeros((4, 5, 6), np.float32), scale=(3.0, 0.5, 0.5), translate=(1, 2, 3))
    request = capture_request(layer, EngineOptions(model="x"))
    assert request.image.meta.spacing == (0.5, 0.5, 3.0)
    assert request.image.meta.origin == (3.0, 2.0, 1.0)
    assert request.image.spatial_shape == (6, 5, 4)


def test_capture_keeps_the_colour_channels_of_an_rgb_layer() -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (5, 6, 3), dtype=np.uint8)  # rows, cols
    request = capture_request(Image(rgb, name="photo", rgb=True), EngineOptions(model="x"))
    assert request.image.array.shape == (3, 6, 5)  # (C, x, y)
    np.testing.assert_array_equal(request.image.array[1, 4, 2], rgb[2, 4, 1])


def test_capture_refuses_4d_and_multiscale_layers() -> None:
    with pytest.raises(GeometryError, match="layer 'movie' has 4 axes"):
        capture_request(Image(np.zeros((2, 3, 4, 5)), name="movie"), EngineOptions(model="x"))
    pyramid = [np.zeros((64, 64), np.uint8), np.zeros((32, 32), np.uint8)]
    with pytest.raises(GeometryError, match="layer 'slide' is multiscale"):
        capture_request(Image(pyramid, name="slide", multiscale=True), EngineOptions(model="x"))


def test_segmenter_cache_loads_once_per_options(tiny_model: Path) -> None:
    cache = SegmenterCache()
    options = EngineOptions(model=str(tiny_model), inference=InferenceOptions(device="cpu"))
    first = cache.get(options)
    assert cache.get(options) is first
    assert cache.get(EngineOptions(
        model=str(tiny_model), inference=InferenceOptions(device="cpu", tta=True))) is not first


def test_chosen_model() -> None:
    assert chosen_model("hippocampus", "") == "hippocampus"
    assert chosen_model(CHECKPOINT_CHOICE, "/m/a.safetensors") == "/m/a.safetensors"
    with pytest.raises(ModelError, match=r"choose a \.safetensors model file \(got '\.'\)"):
        chosen_model(CHECKPOINT_CHOICE, ".")


@pytest.mark.slow  # a few seconds on an idle machine, 20 s on a loaded 2-core one
def test_2d_image_layer_with_a_2d_model(tmp_path: Path) -> None:
    import torch

    from medseg.model_card import ModelCard, save_model
    from medseg.networks import build_network, plan_network

    torch.manual_seed(1)
    config = plan_network(spatial_dims=2, in_channels=1, out_channels=2, patch_size=[32, 32],
                          base_filters=4, max_filters=8)
    card = ModelCard(name="em", network=config, label_names={0: "membrane", 1: "cell"},
                     roi_size=[32, 32])
    path = save_model(tmp_path / "em.safetensors", build_network(config), card)
    layer = Image(np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32), name="em",
                  scale=(0.5, 0.25))
    request = capture_request(layer, EngineOptions(
        model=str(path), inference=InferenceOptions(device="cpu")))
    prediction = run_request(request, SegmenterCache())
    data, kwargs, _ = result_layer_data(request, prediction)
    assert data.shape == (40, 50)
    assert kwargs["name"] == "em [medseg em]" and kwargs["scale"] == [0.5, 0.25]
    assert kwargs["metadata"]["medseg_label_names"] == {"1": "cell"}



def test_instance_model_run_gives_object_ids_uncertainty_and_an_object_summary(
        tmp_path: Path) -> None:
    import torch

    from medseg.model_card import ModelCard, save_model
    from medseg.networks import build_network, plan_network
    from napari_plugin._layers import INSTANCES_KEY
    from napari_plugin._run import result_summary, uncertainty_layer_data

    torch.manual_seed(2)
    config = plan_network(spatial_dims=2, in_channels=1, out_channels=3, patch_size=[32, 32],
                          base_filters=4, max_filters=8)
    card = ModelCard(name="cells", network=config,
                     label_names={0: "background", 1: "interior", 2: "boundary"},
                     roi_size=[32, 32], instances={"method": "boundary", "min_size": 1})
    path = save_model(tmp_path / "cells.safetensors", build_network(config), card)
    layer = Image(np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32),
                  name="cells")
    request = capture_request(layer, EngineOptions(
        model=str(path), inference=InferenceOptions(device="cpu"),
                                                   uncertainty=True))
    prediction = run_request(request, SegmenterCache())
    assert prediction.instances and prediction.num_objects == int(prediction.labels.array.max())
    ids = np.unique(prediction.labels.array)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))  # consecutive ids 0..N
    data, kwargs, _ = result_layer_data(request, prediction)
    assert kwargs["metadata"][INSTANCES_KEY] is True and "colormap" not in kwargs
    u_data, u_kwargs, kind = uncertainty_layer_data(request, prediction)
    assert kind == "image" and u_data.shape == (40, 50)
    assert float(u_data.min()) >= 0.0 and float(u_data.max()) <= 1.0
    assert result_summary(prediction) == f"{prediction.num_objects} objects"


def test_2d_model_on_a_3d_layer_gives_a_volume_and_a_lesion_table(tmp_path: Path) -> None:
    """The tumour model's path in napari: a 2D model on a volume layer runs slice by slice and
    the result lands on the volume's grid; the review table lists its lesions."""
    import torch

    from medseg.model_card import ModelCard, save_model
    from medseg.networks import build_network, plan_network
    from napari_plugin._logic import layer_measurements

    torch.manual_seed(3)
    config = plan_network(spatial_dims=2, in_channels=1, out_channels=2, patch_size=[16, 16],
                          base_filters=4, max_filters=8)
    card = ModelCard(name="flair2d", network=config, roi_size=[16, 16],
                     label_names={0: "background", 1: "lesion"})
    path = save_model(tmp_path / "flair2d.safetensors", build_network(config), card)
    image = _oblique_image()
    (data, kwargs, _), = image_layer_data(image, name="flair")
    request = capture_request(Image(data, **kwargs), EngineOptions(
        model=str(path), inference=InferenceOptions(device="cpu")))
    prediction = run_request(request, SegmenterCache())
    assert prediction.labels.spatial_shape == SHAPE and prediction.num_windows == SHAPE[2]
    assert prediction.labels.meta.same_grid(image.meta, atol_mm=1e-6)
    lesions = np.zeros((1, *SHAPE), np.uint8)
    lesions[0, 2:6, 3:7, 4:6] = 1  # 32 voxels on slices 5-6
    labels = image.with_array(lesions, label_names={1: "lesion"})
    m = layer_measurements(labels, instances=False)
    voxel_ml = float(np.prod(image.meta.spacing)) / 1000
    assert m.title == f"1 lesion, {32 * voxel_ml:.2f} mL in all"
    assert m.rows[0][:5] == [1, "lesion", round(32 * voxel_ml, 4), 5, 6]
    np.testing.assert_allclose(m.points[0], (4.5, 4.5, 3.5))  # napari order (k, j, i)


def test_fit_banner_warns_on_low_confidence() -> None:
    from types import SimpleNamespace

    from medseg.inference.confidence import CaseConfidence
    from medseg.inference.fit import FitCheck, FitReport
    from napari_plugin._run import fit_banner

    report = FitReport([FitCheck("extent", "ok", "fits")])
    low = CaseConfidence(0.41, 0.7, True, "low confidence (0.41, below 0.70): review it")
    text, level = fit_banner(SimpleNamespace(fit=report, confidence=low))
    assert level == "warn" and text == "CHECK THIS RESULT: " + low.message
    sure = CaseConfidence(0.93, 0.7, False, None)
    text, level = fit_banner(SimpleNamespace(fit=report, confidence=sure))
    assert level == "ok" and text.startswith("fit: the image matches")
    text, level = fit_banner(SimpleNamespace(fit=None, confidence=low))
    assert level == "warn" and low.message in text


def test_an_rgb_layer_is_segmented_like_medseg_predict_on_the_png(shared_data: Path) -> None:
    from medseg.io import read_image
    from napari_plugin._reader import read_layers

    png = sorted((shared_data / "dsb2018_brightfield" / "images").glob("*.png"))[0]
    (data, kwargs, _), = read_layers(str(png))
    options = EngineOptions(model="nuclei", inference=InferenceOptions(device="cpu"))
    prediction = run_request(capture_request(Image(data, **kwargs), options), SegmenterCache())
    # what medseg-predict does with the file: the RGBA channels, the card's channel rule
    expected = Segmenter.from_file("nuclei", device="cpu").predict(read_image(png))
    assert prediction.num_objects == expected.num_objects > 0
    np.testing.assert_array_equal(prediction.labels.array, expected.labels.array)
