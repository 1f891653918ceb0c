"""Find readable inputs under a folder (used by batch inference and dataset loading)."""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import ImageReadError
from medseg.io.dicom_scan import DicomSeriesInfo, group_series, scan_headers
from medseg.io.image2d import is_2d_path
from medseg.io.itk_formats import is_itk_path
from medseg.io.nifti import is_nifti_path


def is_dicom_file(path: str | Path) -> bool:
    """True if the file has the DICOM preamble magic (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_image_file(path: str | Path) -> bool:
    """True for a file :func:`medseg.io.read_image` can read on its own: NIfTI, NRRD/MHA,
    PNG/TIFF/JPEG/BMP by name, or a DICOM file (by content). Hidden files are never images."""
    path = Path(path)
    if path.name.startswith(".") or not path.is_file():
        return False
    return is_nifti_path(path) or is_itk_path(path) or is_2d_path(path) or is_dicom_file(path)


def find_image_files(root: str | Path) -> list[Path]:
    """Non-DICOM image files (NIfTI, NRRD/MHA, PNG/TIFF, ...) under ``root``, sorted.

    DICOM files are left out: find them as series with :func:`find_dicom_series`. A ``.nhdr`` /
    ``.mhd`` header is listed, not its detached data file.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"{root} is not a folder")
    return sorted(
        p for p in root.rglob("*")
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file() and _image_name(p)
    )


def find_hidden_image_files(root: str | Path) -> list[Path]:
    """Files under ``root`` named like images but hidden (name starting with '.', such as
    ``.scan.nii.gz`` or ``..nii.gz``), which :func:`find_image_files` leaves out; sorted."""
    return sorted(p for p in Path(root).rglob(".*") if p.is_file() and _image_name(p))


def _image_name(path: Path) -> bool:
    return is_nifti_path(path) or is_itk_path(path) or is_2d_path(path)


def find_dicom_series(
    root: str | Path, *, errors: list[tuple[Path, str]] | None = None
) -> list[DicomSeriesInfo]:
    """Every DICOM image series under ``root``, one entry per (folder, SeriesInstanceUID).

    Each folder is scanned on its own, so a series copied to two folders is found twice, and
    each entry can be read with ``read_dicom_series(info.folder, series_uid=info.series_uid)``.
    SEG/RTSTRUCT/SR objects are left out. Sorted by folder, then largest series first.

    Args:
        root: Folder to search recursively.
        errors: When given, a folder holding an empty or damaged DICOM file is skipped and
            ``(folder, reason)`` is appended here instead of raising, so that one bad file
            cannot stop an unattended batch.

    Raises:
        ImageReadError: ``root`` is not a folder, or (without ``errors``) holds an empty or
            damaged DICOM file.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"{root} is not a folder")
    found: list[DicomSeriesInfo] = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        try:
            headers = scan_headers(dirpath)
        except ImageReadError as exc:
            if errors is None:
                raise
            errors.append((Path(dirpath), str(exc)))
            continue
        found.extend(s for s in group_series(headers) if s.is_image)
    return found
