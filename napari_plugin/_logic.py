"""Pure logic behind the widgets (no Qt, no viewer): volumes, slices, colours, names, devices.

Every array here is a napari labels array in napari axis order ``(k, j, i)``; spacings are given
in medseg order ``(i, j, k)`` because they come from :class:`ImageMeta`.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ImageWriteError, ModelError

#: Choice in the device box that lets the engine pick (CUDA when available, else CPU).
AUTO_DEVICE = "auto"
DEVICE_CHOICES = (AUTO_DEVICE, "cpu", "cuda")

RGB = tuple[int, int, int]
RGBA = tuple[float, float, float, float]


def result_layer_name(image_name: str, model_name: str) -> str:
    """Name of the labels layer a run produces: ``'<image> [medseg <model>]'``.

    Examples:
        >>> result_layer_name("T1 axial", "hippocampus")
        'T1 axial [medseg hippocampus]'
    """
    return f"{image_name} [medseg {model_name}]"


def model_display_name(model: str) -> str:
    """Short name of a model choice: a shipped name as is, a checkpoint path by its stem.

    Examples:
        >>> model_display_name("/tmp/runs/liver.safetensors"), model_display_name("isbi2012")
        ('liver', 'isbi2012')
    """
    path = Path(model)
    return path.name.removesuffix(".safetensors") if path.suffix else model


def resolve_device(choice: str, *, cuda_available: bool | None) -> str | None:
    """The ``device`` argument for the engine from the widget's choice.

    Args:
        choice: One of :data:`DEVICE_CHOICES`.
        cuda_available: ``torch.cuda.is_available()``, passed in so this stays testable;
            ``None``: not known yet (the engine refuses a missing GPU when it loads).

    Returns:
        ``None`` for ``"auto"`` (the engine picks), else the device string.

    Raises:
        ModelError: Unknown choice, or CUDA requested on a machine without it.
    """
    if choice not in DEVICE_CHOICES:
        raise ModelError(f"unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cuda" and cuda_available is False:
        raise ModelError(
            "device 'cuda' was requested but no CUDA GPU is available; use auto or cpu"
        )
    return None if choice == AUTO_DEVICE else choice


def default_label_color(label: int) -> RGB:
    """A distinct, fixed colour for a label the model card gives none (golden-angle hues).

    Examples:
        >>> default_label_color(1) != default_label_color(2)
        True
    """
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return (round(r * 255), round(g * 255), round(b * 255))


def label_colors_for(
    labels: Sequence[int], colors: Mapping[int, Sequence[int]] | None = None
) -> dict[int, RGB]:
    """Colour of each foreground label: the model card's where given, a default otherwise."""
    colors = colors or {}
    return {
        int(v): tuple(int(c) for c in colors[v])[:3] if v in colors else default_label_color(v)
        for v in labels
        if v != 0
    }


def colormap_dict(
    colors: Mapping[int, Sequence[int]],
    *,
    hidden: set[int] | frozenset[int] = frozenset(),
    opacity: Mapping[int, float] | None = None,
) -> dict[int | None, RGBA]:
    """The ``color_dict`` of a napari ``DirectLabelColormap``, with per-label show/hide and opacity.

    napari's Labels layer has only one opacity for the whole layer; per-label visibility and
    opacity are therefore carried by the alpha of each label's colour.

    Args:
        colors: ``{label: (r, g, b)}`` in 0..255.
        hidden: Labels to draw fully transparent.
        opacity: ``{label: alpha}`` in 0..1 (default 1).

    Returns:
        ``{label: (r, g, b, a)}`` in 0..1, background 0 and unknown labels (``None``) transparent.

    Examples:
        >>> colormap_dict({1: (255, 0, 0), 2: (0, 0, 255)}, hidden={2}, opacity={1: 0.5})[1]
        (1.0, 0.0, 0.0, 0.5)
    """
    opacity = opacity or {}
    out: dict[int | None, RGBA] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for label, rgb in colors.items():
        alpha = 0.0 if label in hidden else float(min(max(opacity.get(label, 1.0), 0.0), 1.0))
        r, g, b = (float(c) / 255.0 for c in rgb[:3])
        out[int(label)] = (r, g, b, alpha)
    return out


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in millilitres (spacing in mm; a 2D pixel counts as 1 mm thick)."""
    return float(np.prod([float(s) for s in spacing])) / 1000.0


def label_counts(labels: np.ndarray, *, label_ids: Sequence[int] = ()) -> dict[int, int]:
    """Voxels of every foreground label present or listed (0 for a listed one that is absent),
    background excluded, sorted.

    Examples:
        >>> label_counts(np.array([[0, 1], [1, 2]]), label_ids=(3,))
        {1: 2, 2: 1, 3: 0}
    """
    flat = np.asarray(labels).ravel()
    if flat.size and flat.min() >= 0 and flat.max() < 1 << 16:
        counts = np.bincount(flat.astype(np.int64, copy=False))
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:  # sparse or negative label values (e.g. a layer napari made): count by sorting
        values, counts = np.unique(flat, return_counts=True)
    present = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}
    for v in label_ids:
        if v != 0:
            present.setdefault(int(v), 0)
    return dict(sorted(present.items()))


def label_volumes_ml(
    labels: np.ndarray, spacing: Sequence[float], *, label_ids: Sequence[int] = ()
) -> dict[int, float]:
    """Volume of every foreground label in mL.

    Args:
        labels: Non-negative integer label array (any axis order).
        spacing: Voxel spacing in mm.
        label_ids: Labels to report even when absent (with 0.0).

    Returns:
        ``{label: mL}`` for every label present or listed, background excluded, sorted.

    Examples:
        >>> label_volumes_ml(np.array([[0, 1], [1, 2]]), (2.0, 5.0, 10.0), label_ids=(3,))
        {1: 0.2, 2: 0.1, 3: 0.0}
    """
    unit = voxel_volume_ml(spacing)
    return {v: float(c) * unit for v, c in label_counts(labels, label_ids=label_ids).items()}


def slice_with_most(labels: np.ndarray, label: int, *, axis: int = 0) -> int | None:
    """Index along ``axis`` of the slice holding the most voxels of ``label`` (``None`` if absent).

    Examples:
        >>> a = np.zeros((3, 2, 2), int); a[1, 0, 0] = 4; a[2] = 4
        >>> slice_with_most(a, 4)
        2
    """
    mask = np.asarray(labels) == label
    other = tuple(a for a in range(mask.ndim) if a != axis)
    per_slice = mask.sum(axis=other)
    if per_slice.max(initial=0) == 0:
        return None
    return int(np.argmax(per_slice))


def label_centroid(labels: np.ndarray, label: int, *, axis: int = 0) -> np.ndarray | None:
    """Data-coordinate centroid of ``label`` within its fullest slice along ``axis``.

    The returned point lies exactly on that slice (its ``axis`` coordinate is the slice index),
    so it can be mapped to the world to move napari's slider and centre the camera on it.
    """
    index = slice_with_most(labels, label, axis=axis)
    if index is None:
        return None
    plane = np.take(np.asarray(labels), index, axis=axis) == label
    coords = np.argwhere(plane).mean(axis=0)
    return np.insert(coords, axis, float(index))


def output_format(path: str | Path) -> str:
    """``"nifti"``, ``"dicom-seg"`` or ``"image2d"`` (a 2D TIFF/PNG label image) from a name.

    Raises:
        ImageWriteError: The extension is none of NIfTI (``.nii``/``.nii.gz``), DICOM (``.dcm``),
            TIFF (``.tif``/``.tiff``) or PNG.

    Examples:
        >>> output_format("mask.nii.gz"), output_format("SEG.dcm"), output_format("cells.tif")
        ('nifti', 'dicom-seg', 'image2d')
    """
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".dcm"):
        return "dicom-seg"
    if name.endswith((".tif", ".tiff", ".png")):
        return "image2d"
    raise ImageWriteError(
        f"{path}: cannot tell the output format; use .nii.gz (NIfTI), .dcm (DICOM SEG) or, "
        "for a 2D image, .tif (TIFF label image)"
    )


@dataclass
class Measurements:
    """What the review widget lists for a labels layer: one row per object or lesion.

    Attributes:
        title: One line (``"37 objects, 11853 px^2 in all"`` / ``"2 lesions, 14.2 mL"``).
        columns: Table columns.
        rows: Table rows (values in ``columns`` order).
        points: For each row, the napari data coordinate to jump to (its centroid).
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]
    points: list[tuple[float, ...]]


def layer_measurements(labels: Any, *, instances: bool) -> Measurements:
    """Objects of a 2D result (each instance id, or each connected region of a class map) or
    lesions of a 3D result (each connected region per label), from a medseg ``MedImage``.

    2D areas are in the image's unit (px^2 without a pixel size); 3D volumes in mL.
    """
    from medseg.inference.measure import lesion_table, object_table_2d
    from medseg.inference.postprocess import area_unit

    array = np.asarray(labels.array[0])
    if labels.meta.ndim == 2:
        unit = area_unit(labels.meta)
        table = object_table_2d(array, None, spacing=labels.meta.spacing, unit=unit,
                                instances=instances)
        total = sum(r["area"] for r in table)
        columns = ["id", "area", "centroid_row", "centroid_column", "eccentricity"]
        return Measurements(
            title=f"{_count(len(table), 'object')}, {total:.6g} {unit} in all", columns=columns,
            rows=[[r[c] for c in columns] for r in table],
            points=[(r["centroid_row"], r["centroid_column"]) for r in table])
    names = labels.meta.label_names or {int(v): f"label {v}" for v in np.unique(array) if v}
    table = lesion_table(labels, names)
    columns = ["lesion", "label", "volume_ml", "first_slice", "last_slice",
               "max_inplane_diameter_mm"]
    total = sum(r["volume_ml"] for r in table)
    return Measurements(
        title=f"{_count(len(table), 'lesion')}, {total:.2f} mL in all", columns=columns,
        rows=[[r[c] for c in columns] for r in table],
        points=[tuple(reversed(r["centroid_voxel"])) for r in table])


def _count(n: int, noun: str) -> str:
    """``"1 lesion"``, ``"2 lesions"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
