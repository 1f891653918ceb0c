"""Write a 3D image as a classic single-frame DICOM image series (CT or MR), with pydicom.

Used by the demo (a synthetic "scanner" study) and by tests that need DICOM inputs, including
deliberately broken ones (a sheared grid gives a gantry-tilted series; deleting a file gives a
missing slice). SimpleITK can also write DICOM series, but it leaves out much of what a strict
validator (``dciodvfy``) expects (patient/study modules, CT rescale type, UID control), so the
headers are written here explicitly with pydicom.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from medseg.errors import ImageWriteError
from medseg.io.atomic import atomic_path
from medseg.io.image import MedImage

logger = logging.getLogger(__name__)

SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
}
_INT16_MIN, _INT16_MAX = -32768, 32767


@dataclass(frozen=True)
class _Rescale:
    slope: float
    intercept: float


def _choose_rescale(values: np.ndarray, modality: str) -> _Rescale:
    """Slope/intercept so that ``stored = (value - intercept) / slope`` fits int16 losslessly if
    the values are integers that fit (CT keeps the conventional intercept -1024), else linearly."""
    lo, hi = float(values.min()), float(values.max())
    integral = bool(np.all(np.abs(values - np.round(values)) < 1e-3))
    intercept = -1024.0 if modality == "CT" else 0.0
    if integral and lo - intercept >= _INT16_MIN and hi - intercept <= _INT16_MAX:
        return _Rescale(1.0, intercept)
    if integral and lo >= _INT16_MIN and hi <= _INT16_MAX:
        return _Rescale(1.0, 0.0)
    slope = (hi - lo) / (_INT16_MAX - _INT16_MIN - 2) if hi > lo else 1.0
    # DS values hold at most 16 characters: round so the header says exactly what we applied.
    slope = float(f"{slope:.10g}")
    intercept = float(f"{lo - (_INT16_MIN + 1) * slope:.10g}")
    return _Rescale(slope, intercept)


def _ds(value: float) -> str:
    """A Decimal String (max 16 characters) that round-trips the value as closely as possible."""
    for digits in range(16, 5, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ImageWriteError(f"cannot encode {value!r} as a DICOM decimal string")


def _common_dataset(image: MedImage, modality: str, *, series_description: str,
                    series_number: int, study_uid: str, series_uid: str, for_uid: str,
                    patient_id: str, patient_name: str, rescale: _Rescale) -> Dataset:
    prov = image.meta.provenance
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASS_BY_MODALITY[modality]
    # Patient and study
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    # Series, frame of reference, equipment
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description or (prov.series_description or "")
    ds.Laterality = ""
    ds.PatientPosition = "HFS"  # how the patient lay; does not change the LPS geometry
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "medseg"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    # Image pixel module: signed 16-bit monochrome
    nx, ny = image.spatial_shape[0], image.spatial_shape[1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
    ds.RescaleSlope = _ds(rescale.slope)
    ds.RescaleIntercept = _ds(rescale.intercept)
    if modality == "CT":
        ds.RescaleType = "HU"
        ds.KVP = ""
        ds.AcquisitionNumber = 1
    else:
        ds.ScanningSequence = "RM"  # research mode: the data was not acquired by a sequence
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.ImagedNucleus = "1H"
        ds.MagneticFieldStrength = ""
    # Image plane module (the geometry): see _slice_dataset for the per-slice position.
    d = image.meta.direction_matrix
    sx, sy, sz = image.meta.spacing
    ds.ImageOrientationPatient = [_ds(float(v)) for v in (*d[:, 0], *d[:, 1])]
    ds.PixelSpacing = [_ds(sy), _ds(sx)]  # (between rows, between columns)
    ds.SliceThickness = _ds(sz)
    ds.SpacingBetweenSlices = _ds(sz)
    return ds


def write_dicom_series(
    image: MedImage,
    folder: str | Path,
    *,
    modality: str = "CT",
    series_description: str = "medseg",
    series_number: int = 1,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str | None = None,
    patient_name: str = "Anonymous^Medseg",
) -> list[Path]:
    """Write a one-channel 3D image as one uncompressed int16 DICOM file per slice.

    Slice ``k`` of the array becomes one instance with
    ``ImagePositionPatient = origin + spacing[2] * k * direction[:, 2]`` (LPS),
    ``ImageOrientationPatient`` = the first two direction columns and
    ``PixelSpacing = (spacing[1], spacing[0])``. The grid is written exactly as given: a grid
    whose third axis is not perpendicular to the first two gives a gantry-tilted series.
    Voxel values are stored as int16 with ``RescaleSlope``/``RescaleIntercept`` (CT uses the
    conventional intercept -1024 when integer HU fit, so stored values round-trip exactly).

    Args:
        image: One-channel 3D image (LPS geometry in ``image.meta``).
        folder: Target folder (created if needed). It may already hold other series, which is how
            a "mixed series" folder is made; existing files are never overwritten.
        modality: ``"CT"`` or ``"MR"`` (selects CT/MR Image Storage).
        series_description: SeriesDescription.
        series_number: SeriesNumber.
        study_instance_uid: Defaults to the image's provenance, else a new UID.
        series_instance_uid: Defaults to a new UID (a written series is a new series).
        frame_of_reference_uid: Defaults to the image's provenance, else a new UID.
        patient_id: Defaults to the image's provenance, else ``"MEDSEG-ANON"``.
        patient_name: PatientName.

    Returns:
        The written files, in slice order (index ``k`` is slice ``k``).

    Raises:
        ImageWriteError: Unsupported modality, not a one-channel 3D image, non-finite voxels,
            or a file that already exists.
    """
    folder = Path(folder)
    modality = modality.upper()
    if modality not in SOP_CLASS_BY_MODALITY:
        raise ImageWriteError(
            f"cannot write a DICOM series to {folder}: modality {modality!r} is not supported "
            f"(use one of {sorted(SOP_CLASS_BY_MODALITY)})"
        )
    if image.meta.ndim != 3 or image.num_channels != 1:
        raise ImageWriteError(
            f"cannot write a DICOM series to {folder}: need a one-channel 3D image, got array "
            f"shape {image.array.shape}"
        )
    values = np.asarray(image.array[0], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ImageWriteError(f"cannot write a DICOM series to {folder}: image has NaN/inf voxels")
    prov = image.meta.provenance
    rescale = _choose_rescale(values, modality)
    stored = np.round((values - rescale.intercept) / rescale.slope)
    stored = np.clip(stored, _INT16_MIN, _INT16_MAX).astype(np.int16)
    series_uid = series_instance_uid or generate_uid()
    base = _common_dataset(
        image, modality, series_description=series_description, series_number=series_number,
        study_uid=study_instance_uid or prov.study_instance_uid or generate_uid(),
        series_uid=series_uid,
        for_uid=frame_of_reference_uid or prov.frame_of_reference_uid or generate_uid(),
        patient_id=patient_id or prov.patient_id or "MEDSEG-ANON", patient_name=patient_name,
        rescale=rescale,
    )
    folder.mkdir(parents=True, exist_ok=True)
    origin = np.asarray(image.meta.origin)
    step = image.meta.direction_matrix[:, 2] * image.meta.spacing[2]
    tag = series_uid.replace(".", "")[-8:]
    paths: list[Path] = []
    for k in range(stored.shape[2]):
        path = folder / f"{modality}_{tag}_{k + 1:04d}.dcm"
        if path.exists():
            raise ImageWriteError(f"refusing to overwrite existing DICOM file {path}")
        ds = base.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        position = origin + k * step
        ds.ImagePositionPatient = [_ds(float(v)) for v in position]
        ds.SliceLocation = _ds(float(position @ np.cross(*image.meta.direction_matrix[:, :2].T)))
        # DICOM pixel data is (rows, columns) = (j, i): transpose the (i, j) slice.
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d-slice %s series %s to %s", len(paths), modality, series_uid, folder)
    return paths
