"""NRRD and MetaImage (.nrrd, .nhdr, .mha, .mhd) reading and writing with SimpleITK.

SimpleITK geometry is already LPS with an ITK direction matrix, so only the axis order changes:
``sitk.GetArrayFromImage`` returns ``(k, j, i)`` (vector images: ``(k, j, i, c)``) and medseg
wants ``(C, i, j, k)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import GeometryError, ImageReadError, ImageWriteError, describe_exception
from medseg.io.atomic import atomic_path
from medseg.io.image import ImageMeta, MedImage, Provenance
from medseg.io.validation import (
    check_finite,
    check_voxel_count,
    require_nonempty_file,
)

if TYPE_CHECKING:  # SimpleITK (~130 MB resident) loads on first use, not at import
    import SimpleITK as sitk

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def is_itk_path(path: str | Path) -> bool:
    """True for NRRD/MetaImage file names (case-insensitive)."""
    return str(path).lower().endswith(ITK_SUFFIXES)


def sitk_to_medimage(img: sitk.Image, provenance: Provenance, *, source: str) -> MedImage:
    """Convert a 2D/3D SimpleITK image (scalar or vector) to a channel-first MedImage."""
    import SimpleITK as sitk

    ndim = img.GetDimension()
    if ndim not in (2, 3):
        raise GeometryError(f"{source} is {ndim}D; medseg reads 2D or 3D images")
    arr = sitk.GetArrayFromImage(img)
    # vector pixels come last: (k, j, i, c) -> (c, k, j, i)
    arr = np.moveaxis(arr, -1, 0) if img.GetNumberOfComponentsPerPixel() > 1 else arr[None]
    # reverse the spatial axes: (c, k, j, i) -> (c, i, j, k)
    arr = np.ascontiguousarray(np.transpose(arr, (0, *range(ndim, 0, -1))))
    check_finite(arr, source=source)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    meta = ImageMeta(
        spacing=tuple(float(s) for s in img.GetSpacing()),
        origin=tuple(float(o) for o in img.GetOrigin()),
        direction=tuple(tuple(float(v) for v in row) for row in direction),
        provenance=provenance,
    )
    return MedImage(arr, meta)


def read_itk_image(path: str | Path) -> MedImage:
    """Read a NRRD or MetaImage file (scalar or vector pixels; vectors become channels).

    Raises:
        ImageReadError: Missing, empty or unreadable file, NaN/inf voxels.
        GeometryError: Not 2D or 3D.
    """
    import SimpleITK as sitk

    path = require_nonempty_file(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header: refuse a decompression bomb before reading
        check_voxel_count((*reader.GetSize(), reader.GetNumberOfComponents()), source=str(path))
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{path} cannot be read (truncated or corrupt?): "
                             f"{describe_exception(exc)}") from exc
    fmt = "nrrd" if path.name.lower().endswith((".nrrd", ".nhdr")) else "mha"
    return sitk_to_medimage(img, Provenance(path=str(path), format=fmt), source=str(path))


def medimage_to_sitk(image: MedImage) -> sitk.Image:
    """The inverse of :func:`sitk_to_medimage` (several channels become a vector image)."""
    import SimpleITK as sitk

    ndim = image.meta.ndim
    arr = np.transpose(image.array, (0, *range(ndim, 0, -1)))  # (c, k, j, i)
    if image.num_channels == 1:
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr[0]))
    else:
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(arr, 0, -1)), isVector=True)
    img.SetSpacing([float(s) for s in image.meta.spacing])
    img.SetOrigin([float(o) for o in image.meta.origin])
    img.SetDirection([float(v) for v in image.meta.direction_matrix.ravel()])
    return img


def write_itk_image(image: MedImage, path: str | Path, *, compress: bool = True) -> Path:
    """Write a NRRD or MetaImage file (atomically) with the image's exact geometry."""
    import SimpleITK as sitk

    path = Path(path)
    if not is_itk_path(path) or path.name.lower().endswith((".nhdr", ".mhd")):
        raise ImageWriteError(f"{path}: use a single-file .nrrd or .mha name")
    with atomic_path(path) as tmp:
        sitk.WriteImage(medimage_to_sitk(image), str(tmp), useCompression=compress)
    return path
