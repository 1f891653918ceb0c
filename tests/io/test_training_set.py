"""A training folder filled by a reviewer: layout, pixel alignment, geometry, atomicity."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.errors import GeometryError
from medseg.io import read_image, write_nifti
from medseg.io.image import ImageMeta, MedImage, Provenance
from medseg.io.training_set import add_training_pair
from medseg.training.sources import index_dataset


def _he_image(rows: int = 30, cols: int = 47) -> MedImage:
    """A colour image (C, x, y) with unit pixels, as the 2D reader gives a PNG."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (3, cols, rows), dtype=np.uint8)
    return MedImage(array, ImageMeta.identity(2, provenance=Provenance(spacing_unit="px")))


def _objects(image: MedImage, top: int = 300) -> MedImage:
    """Instance ids up to ``top`` (above 255: they must survive as uint16)."""
    labels = np.zeros(image.spatial_shape, np.int32)
    labels[2:9, 3:7] = top
    labels[20:25, 10:12] = 7
    return MedImage(labels[None], image.meta)


def test_a_colour_image_and_its_objects_line_up_when_read_by_pil(tmp_path: Path) -> None:
    image = _he_image()
    pair = add_training_pair(tmp_path, image, _objects(image), stem="slide 1", instances=True)
    assert pair.image == tmp_path / "images" / "slide_1.png"
    assert pair.mask == tmp_path / "masks" / "slide_1.png"
    with Image.open(pair.image) as im:
        pixels = np.asarray(im)
    with Image.open(pair.mask) as im:
        mask = np.asarray(im)
    assert pixels.shape == (30, 47, 3) and mask.shape == (30, 47)
    np.testing.assert_array_equal(pixels, np.transpose(image.array, (2, 1, 0)))
    assert mask.dtype == np.uint16 and mask[4, 5] == 300 and mask[10, 22] == 7
    assert mask[3, 2] == 300  # (row 3, column 2) is medseg (x 2, y 3)
    # the training indexer finds the pair in the layout medseg-train --data reads
    index = index_dataset("folder2d", tmp_path, image_dir="images", label_dir="masks")
    assert [(p.case_id, p.image, p.label) for p in index.pairs] == [
        ("slide_1", pair.image, pair.mask)]


def test_a_float_image_with_a_pixel_size_keeps_it_in_both_tiffs(tmp_path: Path) -> None:
    meta = ImageMeta.identity(2, provenance=Provenance(spacing_unit="um")).replace(
        spacing=(0.325, 0.5))
    image = MedImage(np.random.default_rng(1).random((1, 40, 31)).astype(np.float32), meta)
    labels = MedImage((image.array > 0.5).astype(np.uint8), meta)
    pair = add_training_pair(tmp_path, image, labels, stem="cells")
    assert pair.image.suffix == pair.mask.suffix == ".tif"
    np.testing.assert_array_equal(tifffile.imread(pair.image), image.array[0].T)
    np.testing.assert_array_equal(tifffile.imread(pair.mask), labels.array[0].T)
    for path in (pair.image, pair.mask):
        back = read_image(path)
        assert back.meta.provenance.spacing_unit == "um"
        np.testing.assert_allclose(back.meta.spacing, (0.325, 0.5), rtol=1e-6)


def test_a_volume_keeps_its_oblique_geometry(tmp_path: Path) -> None:
    angle = np.deg2rad(20)
    direction = ((np.cos(angle), -np.sin(angle), 0.0), (np.sin(angle), np.cos(angle), 0.0),
                 (0.0, 0.0, 1.0))
    meta = ImageMeta(spacing=(0.8, 0.9, 3.0), origin=(-10.0, 22.5, 7.0), direction=direction)
    image = MedImage(np.random.default_rng(2).normal(size=(1, 11, 12, 13)).astype(np.float32),
                     meta)
    labels = MedImage((image.array > 1.0).astype(np.uint8), meta)
    pair = add_training_pair(tmp_path, image, labels, stem="case 7")
    assert pair.image.name == pair.mask.name == "case_7.nii.gz"
    reference = tmp_path / "reference.nii.gz"
    write_nifti(image, reference)
    affine = nib.load(reference).affine
    np.testing.assert_allclose(nib.load(pair.image).affine, affine, atol=1e-5)
    np.testing.assert_allclose(nib.load(pair.mask).affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nib.load(pair.mask).dataobj), labels.array[0])


def test_the_same_image_again_replaces_its_mask_and_another_gets_a_new_stem(
        tmp_path: Path) -> None:
    image = _he_image()
    first = add_training_pair(tmp_path, image, _objects(image), stem="a", instances=True)
    again = add_training_pair(tmp_path, image, _objects(image, top=9), stem="a",
                              instances=True)
    assert again.replaced and again.mask == first.mask
    assert np.asarray(Image.open(again.mask)).max() == 9
    other = image.with_array(255 - image.array)
    third = add_training_pair(tmp_path, other, _objects(other), stem="a", instances=True)
    assert third.stem == "a-2" and not third.replaced
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["a-2.png", "a.png"]


def test_labels_off_the_image_grid_are_refused(tmp_path: Path) -> None:
    image = _he_image()
    wrong = MedImage(np.zeros((1, 47, 29), np.uint16), image.meta)
    with pytest.raises(GeometryError, match="not on the image's grid"):
        add_training_pair(tmp_path, image, wrong, stem="x")
    assert not (tmp_path / "images").exists()


def test_a_failed_image_write_leaves_no_image_without_its_mask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg.io.image2d as image2d

    def broken(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(image2d, "write_image_2d", broken)
    image = _he_image()
    with pytest.raises(OSError, match="disk full"):
        add_training_pair(tmp_path, image, _objects(image), stem="b", instances=True)
    assert not list((tmp_path / "images").glob("*"))  # no image without its mask
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["b.png"]
