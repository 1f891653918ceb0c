"""Read a DICOM SEG onto a reference image grid, frame by frame, by ImagePositionPatient.

highdicom can rebuild a SEG volume from the SOPInstanceUIDs it references, but frames are not
always in slice order (dcmqi writes them reversed) and references may be missing or point to
another copy of the series. So each frame is placed by where it is in space: its
ImagePositionPatient is mapped through the reference grid's ``world_to_index`` and must land
exactly on a slice of that grid with the same orientation and pixel spacing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom

from medseg.errors import GeometryError, ImageReadError
from medseg.io.image import MedImage, Provenance

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: A frame is on the grid if its position is within this fraction of a voxel of a grid point.
GRID_TOL_VOXELS = 0.01


def _functional(ds: pydicom.Dataset, frame: int, name: str) -> pydicom.Dataset:
    """Item of a functional group for one frame: per-frame first, then shared."""
    per_frame = ds.PerFrameFunctionalGroupsSequence[frame]
    if name in per_frame:
        return per_frame[name][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and name in shared[0]:
        return shared[0][name][0]
    raise ImageReadError(f"{ds.filename}: frame {frame + 1} has no {name}")


def _segment_names(ds: pydicom.Dataset) -> dict[int, str]:
    return {int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
            for s in ds.SegmentSequence}


def _load_seg(path: Path) -> pydicom.Dataset:
    if not path.is_file():
        raise ImageReadError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path} is an empty (zero-byte) file")
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ImageReadError(f"{path} cannot be read as DICOM: {exc}") from exc
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise ImageReadError(f"{path} is not a DICOM Segmentation (SOP class "
                             f"{ds.get('SOPClassUID', 'missing')}, modality "
                             f"{ds.get('Modality', 'missing')})")
    return ds


def _frames_binary(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    try:
        frames = ds.pixel_array
    except Exception as exc:  # truncated pixel data, unsupported compression
        raise ImageReadError(f"{path}: cannot decode the segmentation frames: {exc}") from exc
    frames = frames.reshape(int(ds.get("NumberOfFrames", 1)), ds.Rows, ds.Columns)
    if ds.SegmentationType == "FRACTIONAL":
        # a voxel belongs to a segment when its fraction is at least one half
        return frames >= (int(ds.MaximumFractionalValue) + 1) // 2
    return frames.astype(bool)


def read_dicom_seg(path: str | Path, reference: MedImage, *, as_channels: bool = False) -> MedImage:
    """Read a DICOM SEG (BINARY or FRACTIONAL) onto the grid of a reference image.

    Frames are placed by ImagePositionPatient (never by frame index): each must lie on a slice
    of ``reference`` with the same orientation and pixel spacing; frames may cover a sub-region
    of a slice.

    Overlapping segments: with ``as_channels=False`` (default) the result is one label map whose
    value is the segment number, and where segments overlap **the highest segment number wins**
    (a warning gives the number of overlapping voxels). With ``as_channels=True`` the result has
    one binary uint8 channel per segment (channel ``n - 1`` = segment ``n``), so nothing is lost.

    Args:
        path: The SEG file.
        reference: The image the SEG was drawn on (e.g. from :func:`read_dicom_series`).
        as_channels: Return one channel per segment instead of a label map.

    Returns:
        A uint8 (uint16 if > 255 segments) image on ``reference``'s grid with
        ``label_names = {segment number: SegmentLabel}``.

    Raises:
        ImageReadError: Not a readable DICOM SEG.
        GeometryError: Different frame of reference, orientation or pixel spacing, or a frame
            that does not lie on a slice of the reference grid.
    """
    path = Path(path)
    ds = _load_seg(path)
    if reference.meta.ndim != 3:
        raise GeometryError(f"{path}: the reference image must be 3D")
    ref_for = reference.meta.provenance.frame_of_reference_uid
    seg_for = str(ds.get("FrameOfReferenceUID", "") or "")
    if ref_for and seg_for and ref_for != seg_for:
        raise GeometryError(f"{path} is in frame of reference {seg_for}, the reference image in "
                            f"{ref_for}; their positions cannot be compared")
    names = _segment_names(ds)
    frames = _frames_binary(ds, path)
    nseg = max(names) if names else 0
    dtype = np.uint8 if nseg <= 255 else np.uint16
    shape = reference.spatial_shape
    out = np.zeros((nseg if as_channels else 1, *shape), dtype=np.uint8 if as_channels else dtype)
    overlap = 0
    for f in range(frames.shape[0]):
        seg_no = int(_functional(ds, f, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        i0, j0, k = _frame_index(ds, f, reference, path)
        rows, cols = frames.shape[1:]
        inside = i0 >= 0 and i0 + cols <= shape[0] and j0 >= 0 and j0 + rows <= shape[1]
        if not (inside and 0 <= k < shape[2]):
            raise GeometryError(f"{path}: frame {f + 1} lies outside the reference grid "
                                f"(voxel {i0, j0, k} for a {cols}x{rows} frame, grid {shape})")
        mask = frames[f].T  # (rows, cols) -> (i, j)
        if as_channels:
            out[seg_no - 1, i0:i0 + cols, j0:j0 + rows, k] |= mask.astype(np.uint8)
        else:
            region = out[0, i0:i0 + cols, j0:j0 + rows, k]
            overlap += int(np.count_nonzero(mask & (region != 0) & (region != seg_no)))
            region[mask] = np.maximum(region[mask], seg_no)
    if overlap:
        logger.warning("%s: %d voxels belong to several segments; the highest segment number was "
                       "kept (read with as_channels=True to keep every segment)", path, overlap)
    meta = reference.meta.replace(
        label_names=names,
        provenance=Provenance(
            path=str(path), format="dicom-seg", modality="SEG",
            study_instance_uid=str(ds.get("StudyInstanceUID", "")) or None,
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
            frame_of_reference_uid=seg_for or None,
            series_description=str(ds.get("SeriesDescription", "")) or None,
        ),
    )
    return MedImage(out, meta)


def _frame_index(ds: pydicom.Dataset, f: int, reference: MedImage,
                 path: Path) -> tuple[int, int, int]:
    """Grid index ``(i0, j0, k)`` of a frame's first pixel, checked to lie on the grid."""
    meta = reference.meta
    iop = np.array([float(v) for v in
                    _functional(ds, f, "PlaneOrientationSequence").ImageOrientationPatient])
    d = meta.direction_matrix
    if not np.allclose(iop, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-4):
        raise GeometryError(f"{path}: frame {f + 1} orientation {iop.tolist()} differs from the "
                            "reference image's; resample before comparing")
    spacing = [float(v) for v in _functional(ds, f, "PixelMeasuresSequence").PixelSpacing]
    if not np.allclose(spacing, [meta.spacing[1], meta.spacing[0]], rtol=1e-4):
        raise GeometryError(f"{path}: pixel spacing {spacing} differs from the reference's "
                            f"{[meta.spacing[1], meta.spacing[0]]}")
    ipp = np.array([float(v) for v in
                    _functional(ds, f, "PlanePositionSequence").ImagePositionPatient])
    idx = meta.world_to_index(ipp[None])[0]
    rounded = np.round(idx)
    if np.any(np.abs(idx - rounded) > GRID_TOL_VOXELS):
        raise GeometryError(f"{path}: frame {f + 1} at {ipp.tolist()} mm does not lie on a slice "
                            f"of the reference grid (continuous index {np.round(idx, 3).tolist()})")
    return int(rounded[0]), int(rounded[1]), int(rounded[2])
