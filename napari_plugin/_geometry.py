"""Conversion between medseg's :class:`MedImage` and napari layer data + transform.

medseg arrays are ``(C, i, j, k)`` with ``(i, j, k) = (x, y, z)`` and world coordinates in LPS mm.
napari slices the *last two* axes and puts a slider on the first, so a volume is presented as
``(k, j, i) = (z, y, x)``. The napari world is then the LPS position with its components
reversed, ``(S, P, L)``: ``world_napari = reverse(ImageMeta.index_to_world(reverse(index)))``.
With that choice an axial slice shows the patient's left on the screen's right and anterior at
the top (the radiological convention) for an LPS-aligned DICOM series.

Writing ``R`` for the axis reversal, ``D`` for the direction, ``s`` for the spacing and ``o``
for the origin, the napari data-to-world map is ``w = (R D R) diag(R s) d + R o``. For an
identity direction this is exactly a napari ``scale`` and ``translate``; otherwise the rotation
(or flip) and the translation go into the layer's full ``affine`` and ``scale`` keeps the
spacing, so the scale bar and brush sizes stay in millimetres.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medseg.errors import GeometryError
from medseg.io.image import ImageMeta, MedImage

#: Key of the layer metadata holding ``ImageMeta.to_dict()`` of the layer's grid.
META_KEY = "medseg_meta"
#: Key of the layer metadata holding the spatial shape in medseg order ``(i, j, k)``.
SHAPE_KEY = "medseg_spatial_shape"


def layer_transform(meta: ImageMeta) -> dict[str, Any]:
    """napari layer keyword arguments (``scale``, ``translate``, ``affine``) for a grid.

    Args:
        meta: Geometry of a medseg grid.

    Returns:
        ``{"scale": ..., "translate": ..., "affine": ...}`` where ``affine`` is ``None`` for an
        identity direction and the full ``(ndim + 1)``-square matrix otherwise.

    Examples:
        >>> meta = ImageMeta(spacing=(0.5, 0.6, 2.0), origin=(10.0, -20.0, 30.0),
        ...                  direction=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
        >>> t = layer_transform(meta)
        >>> t["scale"], t["translate"], t["affine"]
        ([2.0, 0.6, 0.5], [30.0, -20.0, 10.0], None)
    """
    spacing = [float(s) for s in reversed(meta.spacing)]
    origin = [float(o) for o in reversed(meta.origin)]
    direction = meta.direction_matrix
    if np.array_equal(direction, np.eye(meta.ndim)):
        return {"scale": spacing, "translate": origin, "affine": None}
    n = meta.ndim
    affine = np.eye(n + 1)
    affine[:n, :n] = direction[::-1, ::-1]  # R D R: reverse both the rows and the columns
    affine[:n, n] = origin
    return {"scale": spacing, "translate": [0.0] * n, "affine": affine}


def to_layer_array(array: np.ndarray) -> np.ndarray:
    """One spatial channel ``(i, j, k)`` -> napari order ``(k, j, i)`` (a C-contiguous copy)."""
    return np.ascontiguousarray(np.asarray(array).T)


def from_layer_array(data: Any) -> np.ndarray:
    """napari data ``(k, j, i)`` -> one medseg channel ``(i, j, k)`` (a C-contiguous copy)."""
    return np.ascontiguousarray(np.asarray(data).T)


def layer_metadata(meta: ImageMeta, spatial_shape: Sequence[int]) -> dict[str, Any]:
    """The metadata a medseg layer carries: its grid and shape, for saving and for inference."""
    return {META_KEY: meta.to_dict(), SHAPE_KEY: [int(s) for s in spatial_shape]}


def is_colour_image(image: MedImage) -> bool:
    """True for a 2D image of 3 (RGB) or 4 (RGBA) channels: a colour photograph of a slide."""
    return image.meta.ndim == 2 and image.num_channels in (3, 4)


def to_rgb_layer_array(array: np.ndarray) -> np.ndarray:
    """Colour channels ``(C, i, j)`` -> napari RGB data ``(j, i, 3)`` (rows, columns, RGB), the
    alpha channel dropped (a C-contiguous copy)."""
    return np.ascontiguousarray(np.transpose(np.asarray(array)[:3], (2, 1, 0)))


def from_rgb_layer_array(data: Any) -> np.ndarray:
    """napari RGB(A) data ``(j, i, C)`` -> medseg colour channels ``(C, i, j)`` (a copy)."""
    return np.ascontiguousarray(np.transpose(np.asarray(data), (2, 1, 0)))


def image_layer_data(image: MedImage, *, name: str) -> list[tuple[Any, dict[str, Any], str]]:
    """napari ``LayerData`` tuples for a medseg image.

    A 2D colour image (3 or 4 channels) is one RGB layer (alpha dropped: napari would draw a
    transparent slide); any other image gives one grey layer per channel.

    Args:
        image: Channel-first medseg image.
        name: Layer name (grey channels beyond one get `` [c<n>]`` appended).

    Returns:
        A list of ``(data, kwargs, "image")`` tuples with geometry and ``ImageMeta`` metadata.
    """
    kwargs = layer_transform(image.meta)
    metadata = layer_metadata(image.meta, image.spatial_shape)
    if is_colour_image(image):
        return [(to_rgb_layer_array(image.array),
                 {**kwargs, "name": name, "metadata": dict(metadata), "rgb": True}, "image")]
    layers = []
    for c in range(image.num_channels):
        suffix = f" [c{c}]" if image.num_channels > 1 else ""
        layers.append(
            (
                to_layer_array(image.array[c]),
                {**kwargs, "name": f"{name}{suffix}", "metadata": dict(metadata)},
                "image",
            )
        )
    return layers


def meta_from_layer(metadata: dict[str, Any], *, layer_name: str) -> ImageMeta:
    """The ``ImageMeta`` stored on a medseg layer.

    Raises:
        GeometryError: The layer carries no medseg geometry (it was not opened by medseg).
    """
    stored = metadata.get(META_KEY)
    if not stored:
        raise GeometryError(
            f"layer {layer_name!r} has no medseg geometry in its metadata "
            "(open the image with the medseg reader, or segment it with the medseg widget)"
        )
    return ImageMeta.from_dict(stored)


def meta_from_world_transform(
    data_to_world: Callable[[Sequence[float]], Sequence[float]], ndim: int
) -> ImageMeta:
    """Derive a grid from a layer's data-to-world map (for layers medseg did not open).

    The map is sampled at the data origin and the unit points, which is exact for napari's
    affine transforms, and inverted through the axis reversal described in the module docstring.

    Args:
        data_to_world: napari ``layer.data_to_world``.
        ndim: Number of spatial axes (2 or 3).
    """
    zero = np.asarray(data_to_world([0.0] * ndim), dtype=np.float64)
    cols = [np.asarray(data_to_world(list(np.eye(ndim)[a])), dtype=np.float64) - zero
            for a in range(ndim)]
    linear = np.stack(cols, axis=1)  # napari data axes -> napari world axes
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = linear[::-1, ::-1]
    affine[:ndim, ndim] = zero[::-1]
    return ImageMeta.from_affine(affine)


def labels_to_medimage(
    data: Any, meta: ImageMeta, *, expected_shape: Sequence[int] | None, layer_name: str
) -> MedImage:
    """A napari labels array on a stored grid, back to a one-channel medseg label map.

    The geometry comes from ``meta`` only (never from the layer's scale), and the array must
    have the grid's shape.

    Args:
        data: napari labels data ``(k, j, i)``.
        meta: The grid the labels were made on.
        expected_shape: Spatial shape of that grid in medseg order, if known.
        layer_name: For error messages.

    Raises:
        GeometryError: The array does not fit the grid.
    """
    array = from_layer_array(data)
    if array.ndim != meta.ndim:
        raise GeometryError(
            f"layer {layer_name!r} has {array.ndim} axes but its medseg grid has {meta.ndim}"
        )
    if expected_shape is not None and tuple(array.shape) != tuple(int(s) for s in expected_shape):
        raise GeometryError(
            f"layer {layer_name!r} has shape {tuple(array.shape)} (i, j, k) but its source grid "
            f"is {tuple(expected_shape)}; it cannot be saved on the source geometry"
        )
    if array.min(initial=0) < 0:
        raise GeometryError(f"layer {layer_name!r} contains negative label values")
    top = int(array.max(initial=0))
    dtype = np.uint8 if top <= 255 else np.uint16
    if top > np.iinfo(np.uint16).max:
        raise GeometryError(f"layer {layer_name!r} has label {top}, above the 65535 maximum")
    return MedImage(array.astype(dtype, copy=False)[None], meta)
