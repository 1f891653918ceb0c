"""The data contract of medseg: a channel-first array travelling with its geometry.

Conventions (the same everywhere in medseg, so geometry is never guessed downstream):

* ``MedImage.array`` is channel-first, ``(C, *spatial)``, with 2 or 3 spatial axes.
* Spatial axes are in **ITK index order** ``(i, j, k)``: axis 0 runs along the image's first
  direction column (columns of a DICOM slice, "x"), axis 1 along rows ("y"), axis 2 across
  slices ("z"). This is the order nibabel and MONAI use, and the reverse of
  ``SimpleITK.GetArrayFromImage`` (which is ``(k, j, i)``).
* Physical coordinates are millimetres in the **DICOM/ITK patient frame (LPS)**.
  The world position of voxel index ``ijk`` is ``origin + direction @ (spacing * ijk)``, with
  ``direction`` the ITK direction matrix whose *columns* are the unit vectors of the axes.
* :attr:`ImageMeta.affine` is that mapping as a 4x4 LPS affine; :meth:`ImageMeta.affine_ras`
  is the RAS affine NIfTI/nibabel/MONAI expect (``diag(-1, -1, 1) @ affine``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import GeometryError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Provenance:
    """Where an image came from. Every field is optional: a synthetic image has none of them.

    Attributes:
        path: File or folder the image was read from.
        format: ``"dicom"``, ``"nifti"``, ``"nrrd"``, ``"mha"``, ``"png"``, ``"tiff"``, ...
        modality: DICOM Modality (``"CT"``, ``"MR"``, ...) or a free-text modality.
        study_instance_uid: DICOM StudyInstanceUID.
        series_instance_uid: DICOM SeriesInstanceUID.
        frame_of_reference_uid: DICOM FrameOfReferenceUID.
        patient_id: DICOM PatientID (kept for records, never used to build file names).
        series_description: DICOM SeriesDescription.
        files: For DICOM, the instance files in slice order (array index ``k`` is
            ``files[k]``).
        sop_instance_uids: SOPInstanceUIDs in the same order as ``files``.
        spacing_unit: Unit of the spacing: ``None`` or ``"mm"`` (medical images), ``"um"``
            (a microscopy TIFF with a pixel size), ``"px"`` (no pixel size known: the unit
            spacing is a placeholder, so areas are in pixels).
    """

    path: str | None = None
    format: str | None = None
    modality: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    patient_id: str | None = None
    series_description: str | None = None
    files: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    spacing_unit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["files"] = list(self.files)
        d["sop_instance_uids"] = list(self.sop_instance_uids)
        return d


@dataclass(frozen=True)
class ImageMeta:
    """Geometry and provenance of an image's spatial grid (see the module docstring).

    Attributes:
        spacing: Voxel size in mm per spatial axis, in array axis order.
        origin: World (LPS, mm) position of the centre of voxel ``(0, 0, 0)``.
        direction: ITK direction matrix, ``ndim x ndim``, columns are axis unit vectors.
        provenance: Where the image came from.
        label_names: For label maps, ``{value: name}`` (background 0 usually omitted).
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]
    provenance: Provenance = field(default_factory=Provenance)
    label_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.spacing)
        if n not in (2, 3):
            raise GeometryError(f"only 2D and 3D grids are supported, got {n} spatial axes")
        if len(self.origin) != n or np.asarray(self.direction).shape != (n, n):
            raise GeometryError(
                f"inconsistent geometry: spacing {self.spacing}, origin {self.origin}, "
                f"direction shape {np.asarray(self.direction).shape}"
            )
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise GeometryError(f"voxel spacing must be positive and finite, got {self.spacing}")

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def identity(cls, ndim: int, **kwargs: Any) -> ImageMeta:
        """A unit-spacing grid at the origin (for 2D images and synthetic arrays)."""
        return cls(
            spacing=(1.0,) * ndim,
            origin=(0.0,) * ndim,
            direction=tuple(tuple(float(v) for v in row) for row in np.eye(ndim)),
            **kwargs,
        )

    @classmethod
    def from_affine(cls, affine: np.ndarray, *, ras: bool = False, **kwargs: Any) -> ImageMeta:
        """Build from a 4x4 (3D) or 3x3 (2D) affine; ``ras=True`` for NIfTI-style affines."""
        a = np.asarray(affine, dtype=np.float64)
        if ras:
            if a.shape != (4, 4):
                raise GeometryError("a RAS affine must be 4x4")
            a = LPS_TO_RAS @ a
        n = a.shape[0] - 1
        linear = a[:n, :n]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"affine has a zero-length axis: {a.tolist()}")
        direction = linear / spacing
        return cls(
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in a[:n, n]),
            direction=tuple(tuple(float(v) for v in row) for row in direction),
            **kwargs,
        )

    # -- derived ----------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64)

    @property
    def affine(self) -> np.ndarray:
        """Index-to-world (LPS) affine, ``(ndim + 1) x (ndim + 1)``."""
        n = self.ndim
        a = np.eye(n + 1)
        a[:n, :n] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a[:n, n] = self.origin
        return a

    def affine_ras(self) -> np.ndarray:
        """Index-to-world affine in RAS (NIfTI, nibabel, MONAI). 3D only; 2D is padded to 3D."""
        a = self.affine
        if self.ndim == 2:
            a3 = np.eye(4)
            a3[:2, :2] = a[:2, :2]
            a3[:2, 3] = a[:2, 2]
            a = a3
        return LPS_TO_RAS @ a

    def index_to_world(self, indices: np.ndarray) -> np.ndarray:
        """World (LPS mm) positions of voxel indices, shape ``(N, ndim)`` -> ``(N, ndim)``."""
        idx = np.asarray(indices, dtype=np.float64)
        return idx * np.asarray(self.spacing) @ self.direction_matrix.T + np.asarray(self.origin)

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous voxel indices of world (LPS mm) points, ``(N, ndim)`` -> ``(N, ndim)``."""
        p = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return (p @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    def same_grid(self, other: ImageMeta, *, atol_mm: float = 1e-3) -> bool:
        """True if both grids put the same index at the same place (shape checked separately)."""
        return (
            self.ndim == other.ndim
            and np.allclose(self.spacing, other.spacing, atol=atol_mm)
            and np.allclose(self.origin, other.origin, atol=atol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def replace(self, **changes: Any) -> ImageMeta:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (for records and napari layer metadata)."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": [list(r) for r in self.direction],
            "coordinate_system": "LPS",
            "provenance": self.provenance.to_dict(),
            "label_names": {str(k): v for k, v in self.label_names.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageMeta:
        prov = dict(d.get("provenance") or {})
        prov["files"] = tuple(prov.get("files") or ())
        prov["sop_instance_uids"] = tuple(prov.get("sop_instance_uids") or ())
        return cls(
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(tuple(float(v) for v in r) for r in d["direction"]),
            provenance=Provenance(**prov),
            label_names={int(k): str(v) for k, v in (d.get("label_names") or {}).items()},
        )


@dataclass
class MedImage:
    """A channel-first image or label map with its geometry.

    Attributes:
        array: ``(C, *spatial)`` array; spatial axes in ITK index order ``(i, j, k)``.
        meta: Geometry and provenance of the spatial grid.
    """

    array: np.ndarray
    meta: ImageMeta

    def __post_init__(self) -> None:
        if self.array.ndim != self.meta.ndim + 1:
            raise GeometryError(
                f"array of shape {self.array.shape} does not match a {self.meta.ndim}D grid "
                "(expected channel-first (C, *spatial))"
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    def with_array(self, array: np.ndarray, **meta_changes: Any) -> MedImage:
        """Same grid, new voxels (and optionally changed metadata such as ``label_names``)."""
        meta = self.meta.replace(**meta_changes) if meta_changes else self.meta
        return MedImage(array=array, meta=meta)

    def crop(self, box: Sequence[tuple[int, int]]) -> MedImage:
        """The voxels inside ``box`` (one ``(start, stop)`` index range per spatial axis) on
        their own grid: same spacing and direction, origin moved to the box's first voxel, so
        every voxel keeps its world position. The array is a copy.

        Raises:
            GeometryError: Wrong number of ranges, or a range empty or outside the image.
        """
        box = check_box(box, self.spatial_shape)
        start = np.asarray([b[0] for b in box], dtype=np.float64)
        origin = tuple(float(v) for v in self.meta.index_to_world(start[None])[0])
        array = self.array[(slice(None), *(slice(a, b) for a, b in box))].copy(
            order="F" if fortran_spatial(self.array) else "C")
        return MedImage(array, self.meta.replace(origin=origin))


def fortran_spatial(array: np.ndarray) -> bool:
    """True when the spatial part of a ``(C, *spatial)`` array is stored first-axis-fastest
    (as NIfTI stores a volume)."""
    return array.ndim > 2 and not array[0].flags.c_contiguous and array[0].flags.f_contiguous


def check_box(box: Sequence[Sequence[int]], shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``box`` as ``((start, stop), ...)`` integers, checked against a spatial ``shape``.

    Raises:
        GeometryError: Wrong number of ranges, or a range empty or outside ``[0, size]``.
    """
    if len(box) != len(shape):
        raise GeometryError(f"a box needs one (start, stop) range per axis ({len(shape)}), "
                            f"got {len(box)}")
    out = []
    for axis, (rng, size) in enumerate(zip(box, shape, strict=True)):
        a, b = (int(v) for v in rng)
        if not 0 <= a < b <= size:
            raise GeometryError(f"box range {a}..{b} on axis {axis} is empty or outside the "
                                f"image (0..{size})")
        out.append((a, b))
    return tuple(out)
