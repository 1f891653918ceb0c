"""Find DICOM series in a folder from their headers (pydicom, pixel data not read).

GDCM's series discovery (``sitk.ImageSeriesReader.GetGDCMSeriesIDs``) silently skips files it
cannot parse and does not tell image series from SEG/RTSTRUCT/SR objects; here every file is
classified so that bad files and non-image objects get a clear error instead.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID

from medseg.errors import ImageReadError

logger = logging.getLogger(__name__)

#: SOP classes that are never images, with a readable name for error messages.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "DICOM Segmentation (SEG)",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set (RTSTRUCT)",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose (RTDOSE)",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan (RTPLAN)",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.11.1": "Presentation State",
}
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass(frozen=True)
class DicomHeader:
    """The fields of one DICOM file that series discovery and validation need."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    description: str
    patient_id: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slice_thickness: float | None
    rescale: tuple[float, float]
    number_of_frames: int
    has_pixels: bool
    matrix: tuple[int, int] | None = None

    @property
    def kind(self) -> str:
        """``"image"`` or the name of the non-image object (e.g. ``"DICOM Segmentation (SEG)"``)."""
        if self.sop_class_uid in NON_IMAGE_SOP_CLASSES:
            return NON_IMAGE_SOP_CLASSES[self.sop_class_uid]
        if self.sop_class_uid.startswith(_SR_PREFIX):
            return "Structured Report (SR)"
        if not self.has_pixels:
            return "DICOM object without pixel data"
        return "image"


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found on disk.

    Attributes:
        series_uid: SeriesInstanceUID.
        modality: Modality (``"CT"``, ``"MR"``, ``"SEG"``, ...).
        description: SeriesDescription (may be empty).
        num_instances: Number of files (instances) in the series.
        folder: Folder the files are in (the common parent).
        files: The files, sorted by name (image series are sorted by position when read).
        study_uid: StudyInstanceUID.
        is_image: False for SEG, RTSTRUCT, SR and other objects that are not images.
        kind: ``"image"`` or the readable name of the non-image object type.
    """

    series_uid: str
    modality: str
    description: str
    num_instances: int
    folder: Path
    files: tuple[Path, ...] = field(repr=False)
    study_uid: str = ""
    is_image: bool = True
    kind: str = "image"

    def summary(self) -> str:
        """One line for error messages and logs."""
        desc = f" '{self.description}'" if self.description else ""
        uid = self.series_uid or "<no SeriesInstanceUID>"
        return f"{uid} ({self.modality}{desc}, {self.num_instances} files)"


def _floats(value: object) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        return tuple(float(v) for v in value)  # type: ignore[union-attr]
    except TypeError:
        return (float(value),)  # type: ignore[arg-type]


PIXEL_DATA_TAG = Tag(0x7FE0, 0x0010)
#: File endings that say "this is DICOM".
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
#: Values longer than this are not read while scanning headers (PixelData above all).
_DEFER_BYTES = 4096


def _check_not_cut_short(ds: pydicom.Dataset, size: int) -> None:
    """pydicom stops quietly at the end of a file: raise when an element (still raw, just after
    reading) announces more bytes than the file holds, e.g. a copy cut inside a UID."""
    for raw in ds._dict.values():
        tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
        if tell is not None and length is not None and length != 0xFFFFFFFF \
                and tell + length > size:
            raise ValueError(f"element {raw.tag} needs {length} bytes at offset {tell} but the "
                             f"file ends at {size}")


def _check_pixel_data_length(ds: pydicom.Dataset) -> None:
    """Raise ``ValueError`` when native (uncompressed) PixelData does not hold exactly
    Rows x Columns x frames x SamplesPerPixel x BitsAllocated bits (plus even padding): an
    edited BitsAllocated, Rows or Columns would otherwise decode into a wrong image."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and UID(str(syntax)).is_compressed:
        return  # encapsulated frames: the decoder checks them
    raw = ds._dict.get(PIXEL_DATA_TAG)  # the element's header only, its value is deferred
    if raw is None:
        raise ValueError("an image without PixelData (truncated copy?)")
    length = getattr(raw, "length", None)  # one cut short was refused by _check_not_cut_short
    if length is None or length == 0xFFFFFFFF:
        return
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in (1, 8, 16, 32, 64):
        raise ValueError(f"BitsAllocated is {bits}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    values = int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1) or 1)
    expected = (values * bits + 7) // 8
    if not expected <= length <= expected + 1:
        raise ValueError(f"PixelData holds {length} bytes but Rows {int(ds.Rows)} x Columns "
                         f"{int(ds.Columns)} x {frames} frame(s) x BitsAllocated {bits} needs "
                         f"{expected}")


def read_header(path: Path) -> DicomHeader | None:
    """Read one file's header; ``None`` if it is not DICOM at all.

    Raises:
        ImageReadError: Empty file, or a DICOM file whose header is truncated or corrupt.
    """
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(f"{path} is an empty (zero-byte) file; the copy is incomplete")
    with open(path, "rb") as f:
        head = f.read(132)
    has_magic = len(head) == 132 and head[128:132] == b"DICM"
    # a file named as DICOM, or a cut-off preamble (nothing but zero bytes), that is not
    # readable DICOM is a damaged slice: skipping it would silently shorten its series
    claims_dicom = has_magic or path.suffix.lower() in DICOM_SUFFIXES or (
        len(head) < 132 and not any(head))
    header = _read_header(path, head, has_magic, size)
    if header is None and claims_dicom:
        raise ImageReadError(f"{path} is a damaged DICOM file: no readable DICOM header "
                             f"({size} bytes; truncated copy?)")
    return header


def _read_header(path: Path, head: bytes, has_magic: bool, size: int) -> DicomHeader | None:
    try:
        # pixel data deferred (not read), but its element header is: its length is checked
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=not has_magic)
        _check_not_cut_short(ds, size)
        meta = getattr(ds, "file_meta", None) or {}
        # Some anonymisers blank the UIDs in the data set; the file meta header keeps a copy.
        sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
        sop_uid = str(ds.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", ""))
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    except InvalidDicomError:
        return None
    except Exception as exc:  # pydicom raises many types on truncated headers
        if has_magic:
            raise ImageReadError(f"{path} is a damaged DICOM file (truncated or corrupt header: "
                                 f"{exc})") from exc
        return None
    if not has_magic and not (sop_class and series_uid):
        return None  # forced parsing of a non-DICOM file produced garbage
    if not series_uid:
        logger.debug("%s has no SeriesInstanceUID (anonymised?)", path)
    # an image pixel module always has Rows
    has_pixels = "Rows" in ds
    if not has_pixels and "Image Storage" in UID(sop_class).name:
        # pydicom stops quietly at the end of a truncated file: an image without Rows is one
        raise ImageReadError(f"{path} is a damaged DICOM file: its header ends before the image "
                             f"attributes of a {UID(sop_class).name} object (truncated copy?)")
    try:  # text in a numeric tag, an unknown VR, a missing Columns: the file's own fault
        return _header(path, ds, sop_class, sop_uid, series_uid, has_pixels)
    except Exception as exc:  # pydicom converts values lazily and raises many types
        raise ImageReadError(f"{path} is a damaged DICOM file: an unreadable header value "
                             f"({type(exc).__name__}: {exc})") from exc


def _header(path: Path, ds: pydicom.Dataset, sop_class: str, sop_uid: str, series_uid: str,
            has_pixels: bool) -> DicomHeader:
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    thickness = ds.get("SliceThickness")
    position = _floats(ds.get("ImagePositionPatient"))
    orientation = _floats(ds.get("ImageOrientationPatient"))
    spacing = _floats(ds.get("PixelSpacing"))
    for name, values in (("RescaleSlope/RescaleIntercept", (slope, intercept)),
                         ("ImagePositionPatient", position),
                         ("ImageOrientationPatient", orientation), ("PixelSpacing", spacing)):
        if values is not None and not all(math.isfinite(v) for v in values):
            raise ValueError(f"{name} is not finite: {values}")
    if has_pixels and "Columns" not in ds:
        raise ValueError("Rows without Columns")
    if has_pixels:
        _check_pixel_data_length(ds)
    return DicomHeader(
        path=path,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        series_uid=series_uid,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        patient_id=str(ds.get("PatientID", "")),
        position=position,
        orientation=orientation,
        pixel_spacing=spacing,
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        rescale=(slope, intercept),
        number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
        has_pixels=has_pixels,
        matrix=(int(ds.Rows), int(ds.Columns)) if has_pixels else None,
    )


#: Files with these endings are never opened as DICOM (an empty notes.txt is not an error).
NOT_DICOM_SUFFIXES = (
    ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".png", ".jpg", ".jpeg",
    ".bmp", ".tif", ".tiff", ".txt", ".md", ".json", ".csv", ".xml", ".html", ".pdf", ".zip",
    ".gz", ".yaml", ".yml", ".py",
)


def _candidate_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in it
        if p.is_file() and not p.name.lower().endswith(NOT_DICOM_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan_headers(folder: str | Path, *, recursive: bool = False) -> list[DicomHeader]:
    """Headers of every DICOM file in ``folder`` (hidden files and non-DICOM files skipped).

    Raises:
        ImageReadError: The folder does not exist, or holds an empty or damaged DICOM file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder} is not a folder")
    headers = []
    for path in _candidate_files(folder, recursive):
        header = read_header(path)
        if header is None:
            logger.debug("skipping non-DICOM file %s", path)
        else:
            headers.append(header)
    return headers


def group_series(headers: list[DicomHeader]) -> list[DicomSeriesInfo]:
    """Group headers by SeriesInstanceUID; largest series first, then by UID."""
    groups: dict[str, list[DicomHeader]] = defaultdict(list)
    for h in headers:
        groups[h.series_uid].append(h)
    infos = []
    for uid, members in groups.items():
        files = tuple(sorted(h.path for h in members))
        kinds = {h.kind for h in members}
        kind = "image" if kinds == {"image"} else sorted(kinds - {"image"})[0]
        infos.append(DicomSeriesInfo(
            series_uid=uid,
            modality=members[0].modality,
            description=members[0].description,
            num_instances=len(members),
            folder=Path(*_common_parts(files)),
            files=files,
            study_uid=members[0].study_uid,
            is_image=kind == "image",
            kind=kind,
        ))
    return sorted(infos, key=lambda s: (-s.num_instances, s.series_uid))


def _common_parts(files: tuple[Path, ...]) -> tuple[str, ...]:
    parts = files[0].parent.parts
    for f in files[1:]:
        other = f.parent.parts
        n = 0
        while n < min(len(parts), len(other)) and parts[n] == other[n]:
            n += 1
        parts = parts[:n]
    return parts


def list_dicom_series(
    folder: str | Path, *, recursive: bool = False, images_only: bool = False
) -> list[DicomSeriesInfo]:
    """List the DICOM series in a folder, largest first.

    Args:
        folder: Folder to scan. Files that are not DICOM (and hidden files) are skipped.
        recursive: Also scan sub-folders (a series may then span several folders).
        images_only: Leave out SEG, RTSTRUCT, SR and other non-image objects.

    Returns:
        One :class:`DicomSeriesInfo` per SeriesInstanceUID (empty if there is no DICOM file).

    Raises:
        ImageReadError: Missing folder, or an empty/damaged DICOM file in it.

    Examples:
        >>> import tempfile
        >>> list_dicom_series(tempfile.mkdtemp())
        []
    """
    infos = group_series(scan_headers(folder, recursive=recursive))
    return [s for s in infos if s.is_image] if images_only else infos
