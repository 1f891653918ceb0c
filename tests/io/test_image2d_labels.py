"""2D images and label images: orientation, instance ids, pixel size, slice stacks.

A 2D medseg image is ``(C, x, y)``: axis 0 runs along the columns and axis 1 along the rows,
so a PNG of shape ``(rows, cols)`` reads as ``(1, cols, rows)``; the label writer transposes
back, so a label image lines up with its source image when both are opened by PIL/tifffile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.io import ImageMeta, MedImage, Provenance, read_image
from medseg.io.image2d import read_slice_stack, tiff_pixel_size_um, write_label_image_2d

ROWS, COLS = 37, 53


def _asymmetric_image() -> tuple[np.ndarray, np.ndarray]:
    """A dark (rows, cols) uint8 image with a bright L near the top-left, and its mask.

    The L is a horizontal bar (rows 3..5, cols 4..19) and a vertical bar (rows 3..14,
    cols 4..6): it differs from its transpose, its flips and its rotations."""
    mask = np.zeros((ROWS, COLS), bool)
    mask[3:6, 4:20] = True
    mask[3:15, 4:7] = True
    image = np.where(mask, 200, 20).astype(np.uint8)
    image[30, 50] = 90  # a dim dot bottom-right: below the threshold, never in the label
    return image, mask


def _write_source(kind: str, folder: Path, image: np.ndarray) -> Path:
    if kind == "png-pil":
        path = folder / "source.png"
        Image.fromarray(image).save(path)
    elif kind == "tif-pil":
        path = folder / "source.tif"
        Image.fromarray(image).save(path)
    else:
        path = folder / "source.tif"
        tifffile.imwrite(path, image)
    return path


@pytest.mark.parametrize("source_kind", ["png-pil", "tif-pil", "tif-tifffile"])
@pytest.mark.parametrize("label_suffix", [".tif", ".png"])
def test_label_image_lines_up_with_non_square_source(
    tmp_path: Path, source_kind: str, label_suffix: str
) -> None:
    image, mask = _asymmetric_image()
    source = _write_source(source_kind, tmp_path, image)

    img = read_image(source)
    assert img.array.shape == (1, COLS, ROWS)  # (C, x = columns, y = rows)
    np.testing.assert_array_equal(img.array[0], image.T)
    assert img.meta.provenance.spacing_unit == "px"
    assert img.meta.spacing == (1.0, 1.0)

    labels = MedImage((img.array[0] > 128).astype(np.uint8)[None], img.meta)
    out = write_label_image_2d(labels, tmp_path / f"labels{label_suffix}")
    assert out == tmp_path / f"labels{label_suffix}"

    if label_suffix == ".tif":
        back = tifffile.imread(out)
    else:
        with Image.open(out) as im:
            back = np.asarray(im)
    assert back.shape == (ROWS, COLS)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask.astype(np.uint8))
    assert back[3, 19] == 1 and back[14, 4] == 1  # the two ends of the L
    assert back[19, 3] == 0 and back[18, 5] == 0  # inside the transposed L only
    # and the label reads back through medseg onto the image's own grid
    np.testing.assert_array_equal(read_image(out).array, labels.array)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_instance_ids_above_255_are_kept_as_uint16(tmp_path: Path, suffix: str) -> None:
    ids_rc = np.zeros((ROWS, COLS), np.int32)
    ids_rc[0, 0] = 1
    ids_rc[2:5, 7:9] = 255
    ids_rc[10, 40] = 256
    ids_rc[36, 52] = 300  # last row, last column
    labels = MedImage(ids_rc.T[None].copy(), ImageMeta.identity(2))

    out = write_label_image_2d(labels, tmp_path / f"ids{suffix}")
    if suffix == ".tif":
        back = tifffile.imread(out)
        assert back.dtype == np.uint16
    else:
        with Image.open(out) as im:
            assert im.mode.startswith("I")  # a 16-bit greyscale PNG
            back = np.asarray(im)
    assert back.shape == (ROWS, COLS)
    np.testing.assert_array_equal(back, ids_rc)
    assert sorted(np.unique(back).tolist()) == [0, 1, 255, 256, 300]


def test_imagej_tiff_pixel_size(tmp_path: Path) -> None:
    image, _ = _asymmetric_image()
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"unit": "um"})
    assert tiff_pixel_size_um(path) == (0.25, 0.5)  # (x, y): columns 0.25 um, rows 0.5 um

    img = read_image(path)
    assert img.array.shape == (1, COLS, ROWS)
    assert img.meta.spacing == (0.25, 0.5)
    assert img.meta.provenance.spacing_unit == "um"
    assert img.meta.provenance.format == "tiff"


def test_ome_tiff_pixel_size(tmp_path: Path) -> None:
    image, _ = _asymmetric_image()
    square = tmp_path / "square.ome.tif"
    tifffile.imwrite(square, image, ome=True, metadata={"PhysicalSizeX": 0.3,
                                                        "PhysicalSizeY": 0.3})
    assert tiff_pixel_size_um(square) == (0.3, 0.3)
    img = read_image(square)
    assert img.meta.spacing == (0.3, 0.3)
    assert img.meta.provenance.spacing_unit == "um"

    # different X and Y sizes, Y given in nanometres: (x, y) = (0.3 um, 600 nm = 0.6 um)
    oblong = tmp_path / "oblong.ome.tif"
    tifffile.imwrite(oblong, image, ome=True, metadata={
        "PhysicalSizeX": 0.3, "PhysicalSizeY": 600.0, "PhysicalSizeYUnit": "nm"})
    assert tiff_pixel_size_um(oblong) == pytest.approx((0.3, 0.6), rel=1e-12)
    assert read_image(oblong).meta.spacing == pytest.approx((0.3, 0.6), rel=1e-12)


def test_files_without_pixel_size_are_in_pixels(tmp_path: Path) -> None:
    image, _ = _asymmetric_image()
    png = tmp_path / "plain.png"
    Image.fromarray(image).save(png)
    img = read_image(png)
    assert img.meta.provenance.spacing_unit == "px"
    assert img.meta.provenance.format == "png"
    assert img.meta.spacing == (1.0, 1.0)

    plain_tif = tmp_path / "plain.tif"
    tifffile.imwrite(plain_tif, image)
    assert tiff_pixel_size_um(plain_tif) is None
    assert read_image(plain_tif).meta.provenance.spacing_unit == "px"


def test_label_image_carries_the_pixel_size_over(tmp_path: Path) -> None:
    image, mask = _asymmetric_image()
    source = tmp_path / "imagej.tif"
    tifffile.imwrite(source, image, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"unit": "um"})
    img = read_image(source)
    labels = MedImage((img.array[0] > 128).astype(np.uint8)[None], img.meta)

    out = write_label_image_2d(labels, tmp_path / "labels.tif")
    assert tiff_pixel_size_um(out) == (0.25, 0.5)
    with tifffile.TiffFile(out) as tif:
        assert tif.imagej_metadata is not None and tif.imagej_metadata["unit"] == "um"
        page = tif.pages[0]
        assert page.tags["XResolution"].value == (4, 1)  # 4 pixels per um along x
        assert page.tags["YResolution"].value == (2, 1)  # 2 pixels per um along y
        back = tif.asarray()
    assert back.shape == (ROWS, COLS)
    np.testing.assert_array_equal(back, mask.astype(np.uint8))
    back_img = read_image(out)
    assert back_img.meta.spacing == (0.25, 0.5)
    assert back_img.meta.provenance.spacing_unit == "um"


def test_label_image_without_um_has_no_resolution_unit(tmp_path: Path) -> None:
    labels = MedImage(np.ones((1, COLS, ROWS), np.uint8),
                      ImageMeta(spacing=(0.25, 0.5), origin=(0.0, 0.0),
                                direction=((1.0, 0.0), (0.0, 1.0)),
                                provenance=Provenance(spacing_unit="px")))
    out = write_label_image_2d(labels, tmp_path / "labels.tif")
    assert tiff_pixel_size_um(out) is None
    assert read_image(out).meta.provenance.spacing_unit == "px"


def test_read_slice_stack_keeps_rows_columns_and_the_given_order(tmp_path: Path) -> None:
    rows, cols = 5, 7
    r, c = np.mgrid[0:rows, 0:cols]
    planes = {}
    for k in range(3):
        # red = 10 * row + column, green = 100 + slice number, blue = 200 + row
        rgb = np.stack([10 * r + c, np.full_like(r, 100 + k), 200 + r], axis=-1).astype(np.uint8)
        planes[k] = rgb
        Image.fromarray(rgb).save(tmp_path / f"s{k}.png")

    order = [2, 0, 1]  # the order given is the slice order, whatever the names
    stack = read_slice_stack([tmp_path / f"s{k}.png" for k in order])
    assert stack.array.shape == (3, rows, cols, 3)  # (RGB, row, column, slice)
    for z, k in enumerate(order):
        for ch in range(3):
            np.testing.assert_array_equal(stack.array[ch, :, :, z], planes[k][:, :, ch])
    assert stack.array[1, 0, 0].tolist() == [102, 100, 101]
    assert stack.array[0, 4, 6, 0] == 46  # row 4, column 6
    assert stack.meta.spacing == (1.0, 1.0, 1.0)
    assert stack.meta.provenance.format == "slices"
