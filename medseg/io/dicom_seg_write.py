"""Write a label map as a DICOM Segmentation (SEG) that references its source series (highdicom).

Each named label becomes one BINARY segment with its name, a display colour
(RecommendedDisplayCIELabValue) and the algorithm that made it (AUTOMATIC, name and version).
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import numpy as np
import pydicom

from medseg import __version__
from medseg.errors import ImageWriteError
from medseg.io.atomic import atomic_path
from medseg.io.image import MedImage

logger = logging.getLogger(__name__)
_WARNINGS_LOCK = threading.Lock()

#: Default segment colours (RGB), cycled by segment number: distinct, readable on grey CT.
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
)


_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName",
)


def _source_datasets(source: MedImage, path: Path) -> list[pydicom.Dataset]:
    files = source.meta.provenance.files
    if source.meta.provenance.format != "dicom" or not files:
        raise ImageWriteError(
            f"cannot write DICOM SEG {path}: the source image was not read from a DICOM series "
            "(a SEG must reference its source images); write NIfTI instead"
        )
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds, f in zip(datasets, files, strict=True):
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty means the default repertoire; highdicom rejects ''
        for keyword in _TYPE2_COPIED:
            # Type 2 Patient/Study attributes that highdicom copies into the SEG: a source that
            # omits them (legal in some older IODs) gets them empty, which is valid for Type 2.
            if keyword not in ds:
                setattr(ds, keyword, "")
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
                   if not str(ds.get(k, "") or "")]
        if missing:
            raise ImageWriteError(
                f"cannot write DICOM SEG {path}: source file {f} has no {', '.join(missing)} "
                "(anonymised without UIDs), so the SEG could not reference it"
            )
    return datasets


def _segment_numbers(labels: MedImage, label_names: dict[int, str], path: Path) -> dict[int, int]:
    """Label value -> segment number (1..N in increasing label value)."""
    present = {int(v) for v in np.unique(labels.array) if v != 0}
    unnamed = sorted(present - set(label_names))
    if unnamed:
        raise ImageWriteError(f"cannot write DICOM SEG {path}: label values {unnamed} have no "
                              "name in label_names")
    values = sorted(int(v) for v in label_names if int(v) != 0)
    if not values:
        raise ImageWriteError(f"cannot write DICOM SEG {path}: label_names names no segment")
    if values != list(range(1, len(values) + 1)):
        logger.warning("%s: label values %s are stored as segment numbers 1..%d (DICOM SEG "
                       "numbers segments consecutively)", path, values, len(values))
    return {v: n for n, v in enumerate(values, start=1)}


def write_dicom_seg(
    labels: MedImage,
    source: MedImage,
    path: str | Path,
    *,
    label_names: dict[int, str] | None = None,
    label_colors: dict[int, tuple[int, int, int]] | None = None,
    algorithm_name: str = "medseg",
    algorithm_version: str = __version__,
    series_description: str = "medseg segmentation",
    series_number: int = 300,
) -> Path:
    """Write a label map on a DICOM series' grid as a BINARY DICOM SEG referencing that series.

    Args:
        labels: One-channel integer label map on exactly the grid of ``source`` (same shape,
            spacing, origin and direction; resample it first if needed).
        source: The image as read by :func:`medseg.io.read_dicom_series` (its provenance lists
            the source files, whose UIDs the SEG references).
        path: Output ``.dcm`` file (written atomically).
        label_names: ``{label value: segment label}``. Default: ``labels.meta.label_names``.
            Every non-zero value present must be named; named labels that are absent become
            empty segments. Segment numbers are 1..N in increasing label value.
        label_colors: ``{label value: (r, g, b)}`` 0..255, stored as
            RecommendedDisplayCIELabValue. Default: a fixed palette.
        algorithm_name: Stored in each segment's algorithm identification (type AUTOMATIC).
        algorithm_version: Algorithm version.
        series_description: SeriesDescription of the new SEG series.
        series_number: SeriesNumber of the new SEG series.

    Returns:
        The written path.

    Raises:
        ImageWriteError: Source not from DICOM or lacking UIDs, labels not on the source grid,
            unnamed label values, or a highdicom failure.
    """
    import highdicom as hd  # ~18 MB resident: loaded only when a SEG is written

    path = Path(path)
    names = dict(label_names if label_names is not None else labels.meta.label_names)
    datasets = _source_datasets(source, path)
    if labels.num_channels != 1 or labels.spatial_shape != source.spatial_shape \
            or not labels.meta.same_grid(source.meta):
        raise ImageWriteError(
            f"cannot write DICOM SEG {path}: the label map (shape {labels.array.shape}) is not on "
            f"the source series grid (shape {source.array.shape}); resample it onto the source "
            "first"
        )
    if not np.issubdtype(labels.array.dtype, np.integer) and labels.array.dtype != bool:
        raise ImageWriteError(f"cannot write DICOM SEG {path}: labels must be integers, got "
                              f"{labels.array.dtype}")
    numbers = _segment_numbers(labels, names, path)
    lut = np.zeros(int(labels.array.max(initial=0)) + 1, dtype=np.uint8)
    for value, number in numbers.items():
        if value < len(lut):
            lut[value] = number
    # highdicom wants (frames, rows, columns) with frame f from source_images[f]: (k, j, i).
    pixel_array = np.ascontiguousarray(lut[labels.array[0]].transpose(2, 1, 0))
    # Imported here: the code dictionary costs memory and start-up time in every process.
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version,
    )
    colors = label_colors or {}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names[value][:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(
                *colors.get(value, DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)])),
        )
        for value, number in numbers.items()
    ]
    try:
        # catch_warnings swaps process-wide state: one writer at a time (batch cases run on
        # threads). highdicom warns about single-component patient names copied from the source.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
            seg = hd.seg.Segmentation(
                source_images=datasets,
                pixel_array=pixel_array,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="medseg",
                manufacturer_model_name=algorithm_name,
                software_versions=f"medseg {__version__}",
                device_serial_number="none",
                series_description=series_description,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ImageWriteError(f"cannot write DICOM SEG {path}: {exc}") from exc
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    logger.info("wrote DICOM SEG %s: %d segments over %d source images", path, len(numbers),
                len(datasets))
    return path
