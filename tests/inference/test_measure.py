"""Per-object tables: 2D objects (row, column frame) and 3D lesions (mL, slices, mm, LPS)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medseg.inference.measure import (
    LESION_COLUMNS,
    OBJECT_COLUMNS_2D,
    csv_text,
    lesion_table,
    object_table_2d,
    write_csv,
)
from medseg.io import ImageMeta, MedImage

IDENTITY3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _objects_2d() -> tuple[np.ndarray, np.ndarray]:
    """medseg ``(x, y)`` arrays of a 12 x 16 (rows x cols) instance map and intensity image.

    id 1: a 5 x 3 rectangle, rows 2..6, columns 10..12; id 2: a 1 x 4 line, row 9, columns
    1..4. Intensity at (row, col) is 100 * row + col."""
    ids_rc = np.zeros((12, 16), np.int32)
    ids_rc[2:7, 10:13] = 1
    ids_rc[9, 1:5] = 2
    r, c = np.mgrid[0:12, 0:16]
    intensity_rc = (100 * r + c).astype(np.float32)
    return ids_rc.T, intensity_rc.T  # (x, y) = (column, row)


def test_object_table_2d_in_row_column_frame() -> None:
    ids, intensity = _objects_2d()
    assert ids.shape == (16, 12)
    rows = object_table_2d(ids, intensity)
    assert [r["id"] for r in rows] == [1, 2]
    assert all(tuple(r) == OBJECT_COLUMNS_2D for r in rows)
    rect, line = rows

    assert rect["area"] == 15.0 and rect["area_unit"] == "px^2"
    assert (rect["centroid_row"], rect["centroid_column"]) == (4.0, 11.0)
    assert (rect["bbox_min_row"], rect["bbox_min_column"],
            rect["bbox_max_row"], rect["bbox_max_column"]) == (2, 10, 7, 13)
    # mean of 100 * row + col over rows 2..6, cols 10..12 = 100 * 4 + 11
    assert rect["mean_intensity"] == 411.0
    # row variance (5^2 - 1) / 12 = 2, column variance (3^2 - 1) / 12 = 2/3:
    # eccentricity sqrt(1 - (2/3) / 2) = sqrt(2/3)
    assert rect["eccentricity"] == round(math.sqrt(2 / 3), 4) == 0.8165

    assert line["area"] == 4.0
    assert (line["centroid_row"], line["centroid_column"]) == (9.0, 2.5)
    assert (line["bbox_min_row"], line["bbox_min_column"],
            line["bbox_max_row"], line["bbox_max_column"]) == (9, 1, 10, 5)
    assert line["mean_intensity"] == 902.5  # 900 + mean(1, 2, 3, 4)
    assert line["eccentricity"] == 1.0  # no extent across the line


def test_object_table_2d_spacing_unit_and_no_intensity() -> None:
    ids, _ = _objects_2d()
    rows = object_table_2d(ids, None, spacing=(0.5, 0.25), unit="um^2")
    assert [r["area"] for r in rows] == [15 * 0.125, 4 * 0.125]
    assert {r["area_unit"] for r in rows} == {"um^2"}
    assert [r["mean_intensity"] for r in rows] == [None, None]
    # positions stay in pixels
    assert (rows[0]["centroid_row"], rows[0]["centroid_column"]) == (4.0, 11.0)


def test_object_table_2d_empty() -> None:
    assert object_table_2d(np.zeros((5, 4), np.int32), None) == []


def _lesions() -> MedImage:
    arr = np.zeros((1, 24, 24, 8), np.uint8)
    arr[0, 2:12, 3:9, 1:4] = 1  # 10 x 6 x 3 box: indices i 2..11, j 3..8, k 1..3
    arr[0, 20, 20, 6] = 2  # one voxel, far from the box (not 26-connected to it)
    arr[0, 22, 1, 7] = 5  # a label value that is not named: ignored
    meta = ImageMeta(spacing=(0.5, 0.5, 2.0), origin=(-10.0, 20.0, 30.0), direction=IDENTITY3)
    return MedImage(arr, meta)


def test_lesion_table() -> None:
    rows = lesion_table(_lesions(), {0: "background", 1: "tumour", 2: "satellite"})
    assert len(rows) == 2
    assert all(tuple(r) == (*LESION_COLUMNS, "centroid_voxel") for r in rows)
    box, dot = rows  # sorted by volume, largest first

    assert box["lesion"] == 1 and box["label"] == "tumour"
    assert box["voxels"] == 180
    assert box["volume_ml"] == pytest.approx(180 * 0.5 * 0.5 * 2.0 / 1000)  # 0.09 mL
    assert (box["first_slice"], box["last_slice"]) == (2, 4)  # k = 1..3, numbered from 1
    # corner-to-corner between pixel centres: 9 steps of 0.5 mm by 5 steps of 0.5 mm
    assert box["max_inplane_diameter_mm"] == round(math.hypot(9 * 0.5, 5 * 0.5), 2) == 5.15
    # centroid index (6.5, 5.5, 2): origin + spacing * index
    assert (box["centroid_x_mm"], box["centroid_y_mm"], box["centroid_z_mm"]) == (
        -10.0 + 0.5 * 6.5, 20.0 + 0.5 * 5.5, 30.0 + 2.0 * 2)
    assert box["centroid_voxel"] == [6.5, 5.5, 2.0]

    assert dot["lesion"] == 2 and dot["label"] == "satellite"
    assert dot["voxels"] == 1
    assert dot["volume_ml"] == pytest.approx(0.0005)
    assert (dot["first_slice"], dot["last_slice"]) == (7, 7)
    assert dot["max_inplane_diameter_mm"] == 0.0
    assert (dot["centroid_x_mm"], dot["centroid_y_mm"], dot["centroid_z_mm"]) == (
        0.0, 30.0, 42.0)


def test_lesion_table_splits_components_and_follows_the_direction() -> None:
    img = _lesions()
    arr = img.array.copy()
    arr[arr == 2] = 1  # the dot becomes a second lesion of label 1
    flipped = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))
    meta = img.meta.replace(direction=flipped)
    rows = lesion_table(MedImage(arr, meta), {1: "tumour"})
    assert [(r["lesion"], r["label"], r["voxels"]) for r in rows] == [
        (1, "tumour", 180), (2, "tumour", 1)]
    # world = origin + direction @ (spacing * index): x and y now run the other way
    assert (rows[0]["centroid_x_mm"], rows[0]["centroid_y_mm"], rows[0]["centroid_z_mm"]) == (
        -10.0 - 0.5 * 6.5, 20.0 - 0.5 * 5.5, 34.0)
    assert (rows[1]["centroid_x_mm"], rows[1]["centroid_y_mm"]) == (-20.0, 10.0)


def test_csv_text_and_write_csv(tmp_path: Path) -> None:
    rows = lesion_table(_lesions(), {1: "tumour", 2: "satellite"})
    text = csv_text(rows, LESION_COLUMNS)
    lines = text.splitlines()
    assert len(lines) == 1 + len(rows) == 3
    assert lines[0] == ",".join(LESION_COLUMNS)
    assert lines[1] == "1,tumour,0.09,180,2,4,5.15,-6.75,22.75,34.0"
    assert lines[2] == "2,satellite,0.0005,1,7,7,0.0,0.0,30.0,42.0"
    assert csv_text([], LESION_COLUMNS).splitlines() == [",".join(LESION_COLUMNS)]

    out = write_csv(rows, LESION_COLUMNS, tmp_path / "lesions.csv")
    assert out.read_bytes() == text.encode()


def test_lesion_table_is_the_same_for_either_memory_order() -> None:
    from medseg.inference.measure import lesion_table
    from medseg.io import ImageMeta, MedImage

    rng = np.random.default_rng(4)
    labels = np.zeros((30, 26, 12), np.uint8)
    labels[2:9, 3:8, 1:4] = 1
    labels[15:27, 10:22, 5:11] = 1
    labels[20:23, 2:5, 8:10] = 2
    labels[rng.random(labels.shape) > 0.995] = 2
    meta = ImageMeta(spacing=(0.7, 0.9, 2.5), origin=(1.0, 2.0, 3.0),
                     direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    names = {1: "liver", 2: "lesion"}
    c_order = lesion_table(MedImage(labels[None], meta), names)
    f_order = lesion_table(MedImage(np.asfortranarray(labels)[None], meta), names)
    assert c_order == f_order and len(c_order) >= 3
    assert {r["label"] for r in c_order} == {"liver", "lesion"}
    big = max(c_order, key=lambda r: r["voxels"])
    assert big["voxels"] == int((labels[15:27, 10:22, 5:11] == 1).sum())
    assert (big["first_slice"], big["last_slice"]) == (6, 11)


def test_lesion_table_of_an_empty_map_is_empty() -> None:
    from medseg.inference.measure import lesion_table
    from medseg.io import ImageMeta, MedImage

    empty = MedImage(np.zeros((1, 12, 10, 8), np.uint8), ImageMeta.identity(3))
    assert lesion_table(empty, {1: "a", 2: "b"}) == []


def test_a_fragmented_result_lists_only_its_largest_lesions_and_counts_all() -> None:
    """A model on the wrong image can return thousands of specks: the table measures the
    largest ``max_rows`` (the same rows as an uncapped table's first ones) and counts them all."""
    from medseg.inference.measure import lesion_summary, lesion_table

    rng = np.random.default_rng(7)
    labels = np.zeros((60, 50, 20), np.uint8)
    labels[rng.random(labels.shape) > 0.97] = 2  # specks
    labels[5:20, 5:15, 2:9] = 1
    labels[30:40, 30:45, 10:18] = 2
    meta = ImageMeta(spacing=(0.8, 0.8, 2.0), origin=(0.0, 0.0, 0.0),
                     direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    image = MedImage(labels[None], meta)
    names = {1: "liver", 2: "lesion"}
    everything, n_all = lesion_summary(image, names, max_rows=10**6)
    assert n_all == len(everything) > 500
    capped, n = lesion_summary(image, names, max_rows=50)
    assert n == n_all and len(capped) == 50
    key = [(r["voxels"], r["label"]) for r in capped]
    assert key == [(r["voxels"], r["label"]) for r in everything[:50]]
    assert capped[0] == everything[0] and capped[1] == everything[1]  # the two big ones
    assert lesion_table(image, names, max_rows=50) == capped
