"""Read one DICOM image series into a :class:`MedImage` with validated geometry.

Headers are read with pydicom and the slice geometry is checked and sorted by
:func:`medseg.io.validation.validate_slice_geometry`; SimpleITK/GDCM then decodes the pixels
(any transfer syntax GDCM supports, JPEG 2000 included) and applies rescale slope/intercept,
reading the files in the validated order. The geometry of the result comes from the validated
headers, so missing slices or tilt can never slip through.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, ImageReadError
from medseg.io.dicom_scan import (
    DicomHeader,
    DicomSeriesInfo,
    group_series,
    read_header,
    scan_headers,
)
from medseg.io.image import ImageMeta, MedImage, Provenance
from medseg.io.validation import check_finite, check_voxel_count, validate_slice_geometry

logger = logging.getLogger(__name__)


def _headers_for(path: Path) -> list[DicomHeader]:
    if path.is_dir():
        return scan_headers(path)
    header = read_header(path)
    if header is None:
        raise ImageReadError(f"{path} is not a DICOM file")
    return [header]


def _choose_series(path: Path, headers: list[DicomHeader], series_uid: str | None,
                   strict: bool) -> DicomSeriesInfo:
    infos = group_series(headers)
    images = [s for s in infos if s.is_image]
    if not infos:
        raise ImageReadError(f"{path} holds no DICOM files")
    if series_uid is not None:
        match = [s for s in infos if s.series_uid == series_uid]
        if not match:
            listing = "; ".join(s.summary() for s in infos)
            raise ImageReadError(f"{path} has no series {series_uid}; it holds: {listing}")
        if not match[0].is_image:
            raise ImageReadError(
                f"series {series_uid} in {path} is a {match[0].kind}, not an image "
                f"(e.g. {match[0].files[0]})"
            )
        return match[0]
    if not images:
        other = infos[0]
        raise ImageReadError(
            f"{path} holds no DICOM image series, only {other.kind} objects "
            f"(e.g. {other.files[0]}); pass the folder of the image series instead"
        )
    if len(images) > 1:
        listing = "; ".join(s.summary() for s in images)
        if strict:
            raise ImageReadError(
                f"{path} holds {len(images)} DICOM image series; choose one with series_uid: "
                f"{listing}"
            )
        logger.warning("%s holds %d image series; reading the largest, %s (others: %s)",
                       path, len(images), images[0].series_uid, listing)
    return images[0]


def read_dicom_series(
    path: str | Path, *, series_uid: str | None = None, strict: bool = True
) -> MedImage:
    """Read one DICOM image series (a folder, or a single DICOM file) as a one-channel 3D image.

    Args:
        path: Folder holding the series files (not searched recursively), or one DICOM file.
            Non-DICOM and hidden files are ignored; SEG/RTSTRUCT/SR objects beside the images
            are ignored too.
        series_uid: SeriesInstanceUID to read when the folder holds several series.
        strict: With several image series and no ``series_uid``: raise (default) or, if False,
            read the series with the most instances and log a warning.

    Returns:
        ``(1, columns, rows, slices)`` image. Array axes follow ImageOrientationPatient (i along
        a row, j down a column) and k runs along ``row x column``; voxel values have rescale
        slope/intercept applied (float32 when the rescale is not integral). Provenance lists the
        files and SOPInstanceUIDs in slice order.

    Raises:
        ImageReadError: No DICOM, only non-image objects, several series and no choice, an
            empty/damaged file, a multi-frame file, undecodable pixel data, or NaN/inf voxels.
        GeometryError: Missing slices, non-uniform spacing, gantry tilt, mixed orientations or
            pixel spacings.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path} does not exist")
    headers = _headers_for(path)
    info = _choose_series(path, headers, series_uid, strict)
    members = [h for h in headers if h.series_uid == info.series_uid]
    name = f"series {info.series_uid or '<no SeriesInstanceUID>'} in {info.folder}"
    if not info.series_uid:
        logger.warning("%s: the files have no SeriesInstanceUID (anonymised?); reading them as "
                       "one series", info.folder)
    multi = [h for h in members if h.number_of_frames > 1]
    if multi:
        raise ImageReadError(f"{multi[0].path} is a multi-frame DICOM image "
                             f"({multi[0].number_of_frames} frames); only single-frame series "
                             "are supported")
    missing = [h for h in members if h.position is None or h.orientation is None]
    if missing:
        raise GeometryError(f"{missing[0].path} has no ImagePositionPatient/"
                            "ImageOrientationPatient, so its place in the volume is unknown")
    matrices = {h.matrix for h in members}
    if len(matrices) != 1:
        raise GeometryError(f"{name}: slices have different sizes (rows, columns) "
                            f"{sorted(map(str, matrices))}; it is not one 3D volume")
    spacings = {h.pixel_spacing for h in members}
    if len(spacings) != 1 or None in spacings:
        raise GeometryError(f"{name}: slices have different or missing PixelSpacing "
                            f"({sorted(map(str, spacings))})")
    geom = validate_slice_geometry(
        [h.position for h in members], [h.orientation for h in members],  # type: ignore[misc]
        name=name, default_spacing=members[0].slice_thickness,
    )
    ordered = [members[i] for i in geom.order]
    check_voxel_count((*members[0].matrix, len(ordered)), source=name)  # type: ignore[misc]
    array = _read_pixels(ordered)
    check_finite(array, source=name)
    row_spacing, col_spacing = members[0].pixel_spacing  # type: ignore[misc]
    meta = ImageMeta(
        spacing=(float(col_spacing), float(row_spacing), geom.slice_spacing),
        origin=tuple(float(v) for v in geom.origin),
        direction=tuple(tuple(float(v) for v in row) for row in geom.direction),
        provenance=Provenance(
            path=str(path),
            format="dicom",
            modality=ordered[0].modality or None,
            study_instance_uid=ordered[0].study_uid or None,
            series_instance_uid=info.series_uid,
            frame_of_reference_uid=ordered[0].frame_of_reference_uid or None,
            patient_id=ordered[0].patient_id or None,
            series_description=ordered[0].description or None,
            files=tuple(str(h.path) for h in ordered),
            sop_instance_uids=tuple(h.sop_instance_uid for h in ordered),
        ),
    )
    logger.info("read %s: %s voxels, spacing %s mm", name, array.shape[1:], meta.spacing)
    return MedImage(array, meta)


def _read_pixels(ordered: list[DicomHeader]) -> np.ndarray:
    """Decode and rescale the pixels of the sorted files; returns ``(1, i, j, k)``."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(h.path) for h in ordered])
    rescales = {h.rescale for h in ordered}
    integral = all(float(s).is_integer() and float(b).is_integer() for s, b in rescales)
    if len(rescales) > 1 or not integral:
        # GDCM picks the output type from the first file; force float so that fractional or
        # per-slice rescale values are applied without truncation.
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(_which_file_fails(ordered, exc)) from exc
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    if array.ndim != 3 or array.shape[0] != len(ordered):
        raise ImageReadError(f"{ordered[0].path}: expected {len(ordered)} single-frame grey-level "
                             f"slices, SimpleITK decoded an array of shape {array.shape}")
    return np.ascontiguousarray(array.transpose(2, 1, 0))[None]


def _which_file_fails(ordered: list[DicomHeader], exc: Exception) -> str:
    import SimpleITK as sitk

    for h in ordered:
        try:
            sitk.ReadImage(str(h.path))
        except RuntimeError as single:
            first = str(single).strip().splitlines()[-1] if str(single).strip() else ""
            return f"{h.path}: cannot decode the pixel data (truncated or unsupported): {first}"
    return f"{ordered[0].path.parent}: cannot decode the series pixel data: {exc}"
