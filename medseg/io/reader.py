"""``read_image``: one entry point for every supported input, chosen by path type and suffix."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import ImageReadError
from medseg.io.dicom_series import read_dicom_series
from medseg.io.image import MedImage
from medseg.io.image2d import is_2d_path, read_image_2d
from medseg.io.itk_formats import is_itk_path, read_itk_image
from medseg.io.nifti import is_nifti_path, read_nifti


def read_image(
    path: str | Path, *, series_uid: str | None = None, allow_channels: bool = False
) -> MedImage:
    """Read an image with its geometry from a DICOM folder or file, NIfTI, NRRD/MHA or PNG/TIFF.

    A folder is read as a DICOM series. If it holds several image series, ``series_uid`` must
    name one: ``read_image`` never guesses and raises an :class:`ImageReadError` that lists
    them (use :func:`read_dicom_series` with ``strict=False`` to take the largest instead).

    Args:
        path: DICOM folder, DICOM file, ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``/``.mha``/
            ``.mhd``, or ``.png``/``.tif``/``.tiff``/``.jpg``/``.bmp``.
        series_uid: SeriesInstanceUID to read from a DICOM folder with several series.
        allow_channels: For NIfTI, read a 4D file's 4th axis as channels instead of raising.

    Returns:
        A channel-first :class:`MedImage` (see :mod:`medseg.io.image` for the conventions).

    Raises:
        ImageReadError: Missing path, unknown format, or any unreadable/invalid input.
        GeometryError: Inconsistent geometry (missing slices, tilt, 4D where 3D is expected).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path} does not exist")
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid, strict=True)
    if is_nifti_path(path):
        return read_nifti(path, allow_channels=allow_channels)
    if is_itk_path(path):
        return read_itk_image(path)
    if is_2d_path(path):
        return read_image_2d(path)
    return read_dicom_series(path, series_uid=series_uid, strict=True)
