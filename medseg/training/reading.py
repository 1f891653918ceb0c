"""Read training images and label maps as :class:`MedImage` through :mod:`medseg.io`.

Only adds the case id to error messages, so a bad file in a 200-case dataset is easy to find.
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import DatasetError, MedsegError
from medseg.io import MedImage, read_dicom_seg, read_image


def read_case_image(path: Path, *, case_id: str = "") -> MedImage:
    """Read an image file or DICOM series folder (channel-first, geometry in LPS)."""
    try:
        return read_image(path)
    except MedsegError as exc:
        raise DatasetError(f"case {case_id}: {exc}" if case_id else str(exc)) from exc


def read_case_label(path: Path, reference: MedImage, *, is_seg: bool = False,
                    case_id: str = "") -> MedImage:
    """Read a label map; a DICOM SEG is rasterised onto ``reference``'s grid."""
    if not is_seg:
        return read_case_image(path, case_id=case_id)
    try:
        return read_dicom_seg(path, reference)
    except MedsegError as exc:
        raise DatasetError(f"case {case_id}: {exc}" if case_id else str(exc)) from exc
