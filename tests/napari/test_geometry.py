"""Geometry between medseg (i, j, k) LPS grids and napari (z, y, x) layers, without a viewer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels
from scipy.spatial.transform import Rotation

from medseg.errors import GeometryError
from medseg.io.image import ImageMeta, MedImage
from napari_plugin._geometry import (
    META_KEY,
    SHAPE_KEY,
    image_layer_data,
    labels_to_medimage,
    layer_transform,
    meta_from_layer,
    meta_from_world_transform,
)

SHAPE = (33, 34, 35)


def _meta(direction: np.ndarray) -> ImageMeta:
    return ImageMeta(
        spacing=(0.7, 1.3, 2.9),
        origin=(-12.5, 40.25, 7.0),
        direction=tuple(tuple(float(v) for v in row) for row in direction),
    )


DIRECTIONS = {
    "identity": np.eye(3),
    "ras_flip": np.diag([-1.0, -1.0, 1.0]),
    "oblique": Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix(),
}


@pytest.mark.parametrize("kind", sorted(DIRECTIONS))
def test_layer_data_to_world_equals_index_to_world(kind: str) -> None:
    meta = _meta(DIRECTIONS[kind])
    image = MedImage(np.zeros((1, *SHAPE), np.float32), meta)
    (data, kwargs, layer_type), = image_layer_data(image, name="vol")
    layer = Image(data, **kwargs)
    assert layer_type == "image"
    assert data.shape == SHAPE[::-1]
    ijk = np.random.default_rng(0).uniform(-1, 40, size=(25, 3))
    ijk[0] = 0
    ijk[1] = np.asarray(SHAPE) - 1
    napari_world = np.array([layer.data_to_world(list(p[::-1])) for p in ijk])
    medseg_world = meta.index_to_world(ijk)
    np.testing.assert_allclose(napari_world[:, ::-1], medseg_world, atol=1e-6, rtol=0)
    assert kwargs["metadata"][SHAPE_KEY] == list(SHAPE)
    assert ImageMeta.from_dict(kwargs["metadata"][META_KEY]) == meta


def test_identity_direction_uses_scale_and_translate_only() -> None:
    kwargs = layer_transform(_meta(np.eye(3)))
    assert kwargs == {"scale": [2.9, 1.3, 0.7], "translate": [7.0, 40.25, -12.5], "affine": None}


def test_array_axes_are_reversed() -> None:
    array = np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE)
    (data, _, _), = image_layer_data(MedImage(array[None], _meta(np.eye(3))), name="v")
    assert data[4, 3, 2] == array[2, 3, 4]
    assert data.flags.c_contiguous


def test_multichannel_image_gives_one_layer_per_channel() -> None:
    image = MedImage(np.zeros((2, 5, 6, 7), np.float32), _meta(np.eye(3)))
    names = [kw["name"] for _, kw, _ in image_layer_data(image, name="mr")]
    assert names == ["mr [c0]", "mr [c1]"]


@pytest.mark.parametrize("kind", sorted(DIRECTIONS))
def test_meta_from_world_transform_inverts_layer_transform(kind: str) -> None:
    meta = _meta(DIRECTIONS[kind])
    layer = Labels(np.zeros(SHAPE[::-1], np.uint8), **layer_transform(meta))
    derived = meta_from_world_transform(layer.data_to_world, 3)
    np.testing.assert_allclose(derived.affine, meta.affine, atol=1e-9)


def test_meta_from_world_transform_of_a_plain_scaled_layer() -> None:
    layer = Image(np.zeros((4, 5, 6)), scale=(3.0, 2.0, 0.5), translate=(10.0, 20.0, 30.0))
    meta = meta_from_world_transform(layer.data_to_world, 3)
    assert meta.spacing == (0.5, 2.0, 3.0)
    assert meta.origin == (30.0, 20.0, 10.0)
    np.testing.assert_array_equal(meta.direction_matrix, np.eye(3))


def test_2d_grid_round_trip() -> None:
    meta = ImageMeta(spacing=(0.25, 0.5), origin=(3.0, -4.0), direction=((1, 0), (0, 1)))
    (data, kwargs, _), = image_layer_data(MedImage(np.zeros((1, 8, 9)), meta), name="em")
    layer = Image(data, **kwargs)
    np.testing.assert_allclose(layer.data_to_world([5, 7]), meta.index_to_world([[7, 5]])[0][::-1])


def test_labels_to_medimage_takes_geometry_from_meta_and_checks_shape() -> None:
    meta = _meta(DIRECTIONS["oblique"])
    data = np.zeros(SHAPE[::-1], np.int32)
    data[1, 2, 3] = 7
    out = labels_to_medimage(data, meta, expected_shape=SHAPE, layer_name="seg")
    assert out.array.shape == (1, *SHAPE) and out.array.dtype == np.uint8
    assert out.array[0, 3, 2, 1] == 7 and out.meta is meta
    with pytest.raises(GeometryError, match=r"layer 'seg' has shape \(35, 34, 33\)"):
        labels_to_medimage(data.T, meta, expected_shape=SHAPE, layer_name="seg")
    data[0, 0, 0] = 300
    assert labels_to_medimage(data, meta, expected_shape=None, layer_name="s").array.dtype == (
        np.uint16
    )
    data[0, 0, 0] = -1
    with pytest.raises(GeometryError, match="layer 's' contains negative label values"):
        labels_to_medimage(data, meta, expected_shape=None, layer_name="s")


def test_meta_from_layer_without_medseg_metadata_names_the_layer() -> None:
    with pytest.raises(GeometryError, match="layer 'paint' has no medseg geometry"):
        meta_from_layer({}, layer_name="paint")
