"""Checks that turn silently-wrong inputs into clear errors.

SimpleITK/GDCM read a DICOM series even when slices are missing, spaced unevenly or tilted (it
takes the spacing between the first two slices and carries on), which would put every voxel
after the gap in the wrong place. So the slice geometry is validated here from each file's
ImagePositionPatient/ImageOrientationPatient before any pixel is trusted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError, GeometryError, ImageReadError

#: Two orientations are "the same" if their direction cosines agree to this.
ORIENTATION_TOL = 1e-4
#: Relative tolerance on slice spacing (DICOM positions are often written with ~1e-3 mm precision).
SPACING_RTOL = 0.01
#: A slice is off the normal (gantry tilt) if it sits more than this many mm sideways.
TILT_TOL_MM = 0.01


@dataclass(frozen=True)
class SliceGeometry:
    """Geometry of a validated, sorted DICOM series.

    Attributes:
        order: Indices into the input lists, sorted by position along the slice normal.
        row_direction: Unit vector along a row (increasing column index, array axis ``i``).
        column_direction: Unit vector down a column (increasing row index, array axis ``j``).
        normal: ``row x column``; positions increase along it in ``order``.
        origin: ImagePositionPatient of the first slice in ``order``.
        slice_spacing: Distance between consecutive slices (mm); 1.0 for a single slice.
    """

    order: tuple[int, ...]
    row_direction: np.ndarray
    column_direction: np.ndarray
    normal: np.ndarray
    origin: np.ndarray
    slice_spacing: float

    @property
    def direction(self) -> np.ndarray:
        """ITK direction matrix (columns = unit vectors of array axes i, j, k)."""
        return np.stack([self.row_direction, self.column_direction, self.normal], axis=1)


def validate_slice_geometry(
    positions: Sequence[Sequence[float]],
    orientations: Sequence[Sequence[float]],
    *,
    name: str,
    default_spacing: float | None = None,
) -> SliceGeometry:
    """Sort slices along their normal and check they form one regular 3D grid.

    Args:
        positions: ImagePositionPatient per slice (LPS mm).
        orientations: ImageOrientationPatient per slice (6 direction cosines).
        name: How to name the series in error messages (e.g. ``"series 1.2.3 in /data/ct"``).
        default_spacing: Slice spacing to use for a single-slice series (SliceThickness).

    Returns:
        The sorted geometry.

    Raises:
        GeometryError: Mixed orientations, duplicate positions, missing slices, non-uniform
            spacing or gantry tilt, each with the positions involved.
    """
    pos = np.asarray(positions, dtype=np.float64)
    iop = np.asarray(orientations, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3 or iop.shape != (len(pos), 6):
        raise GeometryError(f"{name}: every slice needs ImagePositionPatient and "
                            "ImageOrientationPatient")
    if np.any(np.abs(iop - iop[0]) > ORIENTATION_TOL):
        bad = int(np.argmax(np.any(np.abs(iop - iop[0]) > ORIENTATION_TOL, axis=1)))
        raise GeometryError(f"{name}: slices have different orientations ({iop[0].tolist()} vs "
                            f"{iop[bad].tolist()}); it is not one 3D volume")
    row, col = iop[0, :3], iop[0, 3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        raise GeometryError(f"{name}: ImageOrientationPatient rows and columns are not "
                            f"perpendicular ({iop[0].tolist()})")
    normal = np.cross(row, col)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    pos, along = pos[order], along[order]
    if len(pos) == 1:
        spacing = float(default_spacing) if default_spacing and default_spacing > 0 else 1.0
        return SliceGeometry(tuple(int(o) for o in order), row, col, normal, pos[0], spacing)
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        k = int(np.argmax(gaps < 1e-3))
        raise GeometryError(f"{name}: two slices share the position {along[k]:.3f} mm along the "
                            "slice normal (duplicate slices or several series mixed)")
    _check_tilt(pos, normal, along, name)
    spacing = float(np.median(gaps))  # the regular spacing, assuming most slices are present
    _check_spacing(gaps, along, spacing, name)
    # Spacing from the full extent: less sensitive to rounding of individual positions.
    spacing = float((along[-1] - along[0]) / (len(along) - 1))
    return SliceGeometry(tuple(int(o) for o in order), row, col, normal, pos[0], spacing)


def _check_tilt(pos: np.ndarray, normal: np.ndarray, along: np.ndarray, name: str) -> None:
    offsets = pos - pos[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    dist = np.linalg.norm(sideways, axis=1)
    if np.any(dist > TILT_TOL_MM + 1e-4 * np.abs(along - along[0])):
        k = int(np.argmax(dist))
        angle = float(np.degrees(np.arctan2(dist[k], abs(along[k] - along[0]))))
        raise GeometryError(
            f"{name}: slice positions do not lie along the slice normal (gantry tilt of about "
            f"{angle:.2f} degrees: slice {k} is {dist[k]:.3f} mm off the normal through the "
            "first slice); resample it to an untilted grid before use"
        )


def _check_spacing(gaps: np.ndarray, along: np.ndarray, spacing: float, name: str) -> None:
    bad = np.abs(gaps - spacing) > SPACING_RTOL * spacing
    if not np.any(bad):
        return
    k = int(np.argmax(bad))
    ratio = gaps[k] / spacing
    lo, hi = along[k], along[k + 1]
    if abs(ratio - round(ratio)) <= SPACING_RTOL * ratio:
        missing = int(round(ratio)) - 1
        more = int(np.count_nonzero(bad)) - 1
        elsewhere = f"; {more} more gap{'s' if more != 1 else ''} further on" if more else ""
        raise GeometryError(
            f"{name} has {missing} missing slice{'s' if missing != 1 else ''} between "
            f"z={lo:.1f} and z={hi:.1f} mm (expected a slice every {spacing:.3f} mm{elsewhere})"
        )
    raise GeometryError(
        f"{name} has non-uniform slice spacing: {gaps[k]:.3f} mm between z={lo:.1f} and "
        f"z={hi:.1f} mm, but {spacing:.3f} mm elsewhere"
    )


def check_finite(array: np.ndarray, *, source: str) -> None:
    """Raise :class:`ImageReadError` if a floating-point image holds NaN or inf voxels."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ImageReadError(
            f"{source}: {bad} voxel{'s are' if bad != 1 else ' is'} NaN or infinite; "
            "fix or mask them before segmentation"
        )


def require_nonempty_file(path: str | Path) -> Path:
    """The path as a ``Path`` if it is an existing, non-empty file; else a clear ImageReadError."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path} is an empty (zero-byte) file")
    return path


#: Default largest image medseg reads (voxels x channels): 2^30, about eight 512x512x512 CTs,
#: 2 GiB as int16. A small compressed file can claim far more ("decompression bomb").
DEFAULT_MAX_VOXELS = 1 << 30


def max_voxels() -> int:
    """The voxel limit: ``MEDSEG_MAX_VOXELS`` when set (a positive integer), else
    :data:`DEFAULT_MAX_VOXELS`."""
    text = os.environ.get("MEDSEG_MAX_VOXELS", "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(text))
    except ValueError:
        raise ConfigError(f"MEDSEG_MAX_VOXELS={text!r} is not a number of voxels") from None
    if value <= 0:
        raise ConfigError(f"MEDSEG_MAX_VOXELS={text!r} must be positive")
    return value


def check_voxel_count(shape: tuple[int, ...], *, source: str) -> None:
    """Raise :class:`ImageReadError` when a header announces more voxels than
    :func:`max_voxels`, before anything is decompressed or allocated."""
    count = math.prod(int(n) for n in shape)
    limit = max_voxels()
    if count > limit:
        raise ImageReadError(f"{source} announces {count:,} voxels (shape {tuple(shape)}), above "
                             f"the limit of {limit:,}; raise MEDSEG_MAX_VOXELS to read it")
