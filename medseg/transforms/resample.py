"""Resampling between grids in physical space (SimpleITK does the interpolation).

Both functions keep the world frame: the result's voxels are sampled at their true LPS positions,
so origin and direction survive exactly and oblique grids are handled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medseg.io.image import ImageMeta, MedImage

if TYPE_CHECKING:  # SimpleITK (~130 MB resident) loads on first use, not at import
    import SimpleITK as sitk


def spacing_matches(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float],
                    *, rtol: float = 1e-3) -> bool:
    """True when two spacings are equal to within ``rtol`` (then resampling is skipped)."""
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=rtol, atol=0))


def _to_sitk(channel: np.ndarray, meta: ImageMeta) -> sitk.Image:
    import SimpleITK as sitk

    # medseg arrays are (i, j, k); SimpleITK arrays are (k, j, i).
    img = sitk.GetImageFromArray(np.ascontiguousarray(channel.T))
    img.SetSpacing([float(s) for s in meta.spacing])
    img.SetOrigin([float(o) for o in meta.origin])
    img.SetDirection([float(v) for v in meta.direction_matrix.ravel()])
    return img


def resample_onto(
    image: MedImage,
    target: ImageMeta,
    target_shape: tuple[int, ...],
    *,
    order: int = 1,
    fill_value: float = 0.0,
) -> MedImage:
    """Sample ``image`` at the voxel centres of the ``target`` grid.

    Args:
        image: Source image, channel-first.
        target: Geometry of the output grid (its provenance/label names are kept).
        target_shape: Spatial shape of the output grid.
        order: 0 nearest neighbour (label maps), 1 linear (images, probabilities),
            3 B-spline.
        fill_value: Value outside the source's extent.

    Returns:
        A new image on the target grid with the source's dtype (nearest) or float32.
    """
    import SimpleITK as sitk

    interp = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}[order]
    ref = sitk.Image([int(s) for s in target_shape], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in target.spacing])
    ref.SetOrigin([float(o) for o in target.origin])
    ref.SetDirection([float(v) for v in target.direction_matrix.ravel()])
    dtype = image.array.dtype if order == 0 else np.float32
    out = np.empty((image.num_channels, *target_shape), dtype=dtype)
    for c in range(image.num_channels):
        src = image.array[c] if order == 0 else image.array[c].astype(np.float32, copy=False)
        res = sitk.Resample(_to_sitk(src, image.meta), ref, sitk.Transform(), interp,
                            float(fill_value))
        out[c] = sitk.GetArrayFromImage(res).T
    return MedImage(out, target)


def resample_to_spacing(
    image: MedImage, spacing: tuple[float, ...] | list[float], *, order: int = 1
) -> MedImage:
    """Resample to a new voxel spacing over the same physical extent (same origin/direction).

    The new shape is ``round(shape * old_spacing / new_spacing)`` (at least 1 per axis).
    Returns the input unchanged when the spacing already matches.
    """
    spacing = tuple(float(s) for s in spacing)
    if spacing_matches(image.meta.spacing, spacing):
        return image
    shape = resampled_shape(image.spatial_shape, image.meta.spacing, spacing)
    return resample_onto(image, image.meta.replace(spacing=spacing), shape, order=order)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                    new_spacing: Sequence[float]) -> tuple[int, ...]:
    """The grid shape covering the same extent at ``new_spacing``:
    ``round(shape * spacing / new_spacing)``, at least 1 per axis."""
    return tuple(max(1, int(round(n * o / s)))
                 for n, o, s in zip(shape, spacing, new_spacing, strict=True))
