"""Per-object measurements of a result: what a reviewer reads next to the overlay.

* :func:`object_table_2d`: every object of a 2D instance map (scikit-image ``regionprops``):
  id, area, centroid and bounding box in the image's own (row, column) pixels, mean intensity,
  eccentricity. Areas in the image's unit (px^2 without a pixel size).
* :func:`lesion_table`: every connected lesion of a 3D label map: volume in mL, the slice range,
  the largest in-plane diameter in mm and the centroid in patient coordinates (LPS mm).

Both return plain lists of dicts (JSON records) and are written as CSV by :func:`write_csv`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medseg.inference.postprocess import count_values
from medseg.io.image import MedImage, fortran_spatial

#: Above this many pixels in a slice, a lesion's diameter compares only its convex hull's
#: vertices (all pairs of a few dozen points cost less than building the hull).
_HULL_FROM = 48
#: Lesions measured and listed per 3D result (the largest; a study has a few dozen).
MAX_LESION_ROWS = 1000

OBJECT_COLUMNS_2D = ("id", "area", "area_unit", "centroid_row", "centroid_column", "bbox_min_row",
                     "bbox_min_column", "bbox_max_row", "bbox_max_column", "mean_intensity",
                     "eccentricity")
LESION_COLUMNS = ("lesion", "label", "volume_ml", "voxels", "first_slice", "last_slice",
                  "max_inplane_diameter_mm", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm")


def object_table_2d(ids: np.ndarray, intensity: np.ndarray | None, *,
                    spacing: Sequence[float] = (1.0, 1.0), unit: str = "px^2",
                    instances: bool = True) -> list[dict[str, Any]]:
    """One row per object of a 2D instance map given as medseg arrays ``(x, y)``; with
    ``instances=False`` the map holds classes and each connected region of any foreground
    class is an object.

    Rows and columns are the image's own (the arrays are transposed to ``(row, column)``
    first); bounding boxes are half-open (``max`` is one past the last pixel), as in
    scikit-image. ``intensity`` (``(x, y)``, the image's first channel) gives the mean
    intensity of each object.
    """
    from skimage.measure import regionprops_table

    if not instances:
        from scipy import ndimage

        ids = ndimage.label(np.asarray(ids) > 0)[0]
    rows_cols = np.ascontiguousarray(np.asarray(ids).T)
    props = ["label", "area", "centroid", "bbox", "eccentricity"]
    extra = {}
    if intensity is not None:
        props.append("intensity_mean")
        extra["intensity_image"] = np.ascontiguousarray(np.asarray(intensity, np.float32).T)
    if rows_cols.max(initial=0) == 0:
        return []
    t = regionprops_table(rows_cols.astype(np.int64, copy=False), properties=props, **extra)
    pixel = float(spacing[0]) * float(spacing[1])
    out = []
    for i in range(len(t["label"])):
        out.append({
            "id": int(t["label"][i]), "area": round(float(t["area"][i]) * pixel, 6),
            "area_unit": unit,
            "centroid_row": round(float(t["centroid-0"][i]), 3),
            "centroid_column": round(float(t["centroid-1"][i]), 3),
            "bbox_min_row": int(t["bbox-0"][i]), "bbox_min_column": int(t["bbox-1"][i]),
            "bbox_max_row": int(t["bbox-2"][i]), "bbox_max_column": int(t["bbox-3"][i]),
            "mean_intensity": (round(float(t["intensity_mean"][i]), 4)
                               if "intensity_mean" in t else None),
            "eccentricity": round(float(t["eccentricity"][i]), 4),
        })
    return out


def _max_diameter_mm(points: np.ndarray) -> float:
    """Largest distance between two of ``points`` ``(N, 2)`` (pixel centres in mm); beyond a
    few dozen points only the convex hull's vertices are compared."""
    if len(points) < 2:
        return 0.0
    if len(points) > _HULL_FROM:
        from scipy.spatial import ConvexHull, QhullError

        with contextlib.suppress(QhullError):  # collinear pixels: keep them all as candidates
            points = points[ConvexHull(points).vertices]
    d = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((d**2).sum(-1)).max())


def _max_inplane_diameter_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Largest in-plane extent (mm) over the slices (last axis) of a lesion's mask ``(i, j,
    k)``. The convex hull of a slice's pixels is that of each row's first and last pixel, so
    only those are compared: a lesion of millions of voxels costs a few passes over its box,
    not a coordinate list."""
    rows = mask.any(axis=1)  # (i, k)
    first = mask.argmax(axis=1)
    last = mask.shape[1] - 1 - mask[:, ::-1, :].argmax(axis=1)
    scale = np.asarray(spacing[:2], np.float64)
    best = 0.0
    for z in np.flatnonzero(rows.any(axis=0)):
        i = np.flatnonzero(rows[:, z])
        points = np.concatenate([np.stack([i, first[i, z]], axis=1),
                                 np.stack([i, last[i, z]], axis=1)]).astype(np.float64)
        best = max(best, _max_diameter_mm(points * scale))
    return best


def lesion_table(labels: MedImage, label_names: dict[int, str], *,
                 max_rows: int = MAX_LESION_ROWS) -> list[dict[str, Any]]:
    """The rows of :func:`lesion_summary` (the largest ``max_rows`` lesions)."""
    return lesion_summary(labels, label_names, max_rows=max_rows)[0]


def lesion_summary(labels: MedImage, label_names: dict[int, str], *,
                   max_rows: int = MAX_LESION_ROWS) -> tuple[list[dict[str, Any]], int]:
    """One row per connected lesion (26-connected) of each named foreground label of a 3D map,
    largest first, and the number of lesions found.

    Slices are numbered from 1 along the last array axis (the acquisition axis of a DICOM
    series or a stacked volume); the diameter is the largest in-plane extent over the
    lesion's slices; the centroid is the mean voxel position mapped through the image's
    geometry (LPS millimetres, as DICOM); ``centroid_voxel`` is the same point as array
    indices (for viewers that jump to it).

    Only the ``max_rows`` largest lesions are measured and listed: a result made of
    hundreds of thousands of specks (a model on an image it was not made for) costs one
    counting pass, not a row per speck; the count says how many there were.
    """
    from scipy import ndimage

    arr = np.asarray(labels.array[0])
    # SciPy labels a C-ordered array several times faster: a NIfTI-ordered (Fortran) map is
    # labelled through its transpose, a view, and the boxes turned back
    fortran = fortran_spatial(labels.array)
    spacing = labels.meta.spacing
    voxel_ml = math.prod(spacing) / 1000.0
    affine = labels.meta.affine
    rows: list[dict[str, Any]] = []
    frame = arr.T if fortran else arr
    values = [(v, n) for v, n in sorted(label_names.items()) if v != 0]

    def components(value: int) -> tuple[np.ndarray, tuple[slice, ...], int]:
        """26-connected components of one label inside its bounding box, and their count."""
        mask = frame == value
        where = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != d)))
                 for d in range(mask.ndim)]
        if any(w.size == 0 for w in where):
            return np.zeros((1,) * mask.ndim, np.int32), tuple(slice(0, 1) for _ in where), 0
        crop = tuple(slice(int(w[0]), int(w[-1]) + 1) for w in where)
        comps, count = ndimage.label(mask[crop], structure=np.ones((3, 3, 3), bool))
        return comps, crop, int(count)

    # SciPy's labelling releases the GIL: the labels' passes run side by side
    with ThreadPoolExecutor(max_workers=max(1, min(len(values), os.cpu_count() or 1))) as pool:
        labelled = list(pool.map(components, [v for v, _ in values]))
    total = sum(count for _, _, count in labelled)
    keep: list[set[int] | None] = [None] * len(labelled)  # None: every component
    if total > max_rows:  # only the largest lesions over all labels are measured
        sizes = [count_values(comps, count + 1) for comps, _, count in labelled]
        for part in sizes:
            part[0] = 0
        ranked = sorted(((int(part[c]), i, int(c)) for i, part in enumerate(sizes)
                         for c in np.argsort(-part, kind="stable")[:max_rows] if part[c]),
                        key=lambda t: -t[0])[:max_rows]
        keep = [{c for _, j, c in ranked if j == i} for i in range(len(labelled))]
    for (_, name), (comps, crop, _), kept in zip(values, labelled, keep, strict=True):
        for index, box in enumerate(ndimage.find_objects(comps), start=1):
            if kept is not None and index not in kept:
                continue
            if box is None:
                continue
            mask = comps[box] == index
            box = tuple(slice(b.start + c.start, b.stop + c.start)
                        for b, c in zip(box, crop, strict=True))
            if fortran:
                box, mask = box[::-1], mask.T
            voxels = int(np.count_nonzero(mask))
            centre = np.array([np.dot(np.arange(n), mask.sum(
                axis=tuple(b for b in range(mask.ndim) if b != a))) for a, n in
                enumerate(mask.shape)], dtype=np.float64) / voxels + [s.start for s in box]
            world = affine @ np.append(centre, 1.0)
            diameter = _max_inplane_diameter_mm(mask, spacing)
            rows.append({
                "lesion": len(rows) + 1, "label": name, "volume_ml": round(voxels * voxel_ml, 4),
                "voxels": voxels, "first_slice": box[2].start + 1, "last_slice": box[2].stop,
                "max_inplane_diameter_mm": round(diameter, 2),
                "centroid_x_mm": round(float(world[0]), 2),
                "centroid_y_mm": round(float(world[1]), 2),
                "centroid_z_mm": round(float(world[2]), 2),
                "centroid_voxel": [round(float(v), 2) for v in centre],
            })
    # largest first; ties in a fixed order whatever the array's memory order
    rows.sort(key=lambda r: (-r["voxels"], r["label"], r["centroid_voxel"]))
    for i, r in enumerate(rows, start=1):
        r["lesion"] = i
    return rows, total


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """The rows as CSV text with a header (an empty table is just the header)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(rows: list[dict[str, Any]], columns: Sequence[str], path: str | Path) -> Path:
    """Write :func:`csv_text` atomically."""
    from medseg.io.atomic import atomic_write_text

    return atomic_write_text(path, csv_text(rows, columns))
