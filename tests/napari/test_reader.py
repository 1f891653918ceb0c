"""The medseg napari reader: layers carry geometry that a second library confirms."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from napari.layers import Image
from scipy.spatial.transform import Rotation

from medseg.io.image import ImageMeta
from napari_plugin._geometry import META_KEY, SHAPE_KEY
from napari_plugin._reader import get_reader, read_layers

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _layers(path: Path) -> list[Image]:
    reader = get_reader(str(path))
    assert reader is not None
    return [Image(data, **kwargs) for data, kwargs, kind in reader(str(path)) if kind == "image"]


def test_oblique_nifti_world_matches_nibabel_affine(tmp_path: Path) -> None:
    shape = (33, 34, 35)
    affine = np.eye(4)
    rot = Rotation.from_euler("zyx", [25, -10, 40], degrees=True).as_matrix()
    affine[:3, :3] = rot * np.array([0.8, 1.1, 2.5])
    affine[:3, 3] = [-40.5, 12.25, 80.0]
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)

    (layer,) = _layers(path)
    assert layer.name == "oblique"
    assert layer.data.shape == shape[::-1]
    np.testing.assert_array_equal(layer.data[5, 6, 7], volume[7, 6, 5])
    ijk = np.array([[0, 0, 0], [32, 33, 34], [3.5, 17.25, 9.0]])
    for p in ijk:
        ras = affine[:3, :3] @ p + affine[:3, 3]
        napari_world = np.asarray(layer.data_to_world(list(p[::-1])))
        np.testing.assert_allclose(napari_world[::-1], LPS_FROM_RAS @ ras, atol=1e-6)
    assert layer.metadata[SHAPE_KEY] == list(shape)
    assert ImageMeta.from_dict(layer.metadata[META_KEY]).provenance.format == "nifti"


def _dicom_world(ds: pydicom.Dataset, row: float, col: float) -> np.ndarray:
    """LPS position of (row, col) in a slice, straight from the DICOM header."""
    ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return ipp + col * dc * iop[:3] + row * dr * iop[3:]


def _check_against_headers(layer: Image, *, rows: int, cols: int) -> None:
    files = ImageMeta.from_dict(layer.metadata[META_KEY]).provenance.files
    assert len(files) == layer.data.shape[0]
    for k in (0, len(files) - 1):
        ds = pydicom.dcmread(files[k], stop_before_pixels=True)
        for r, c in ((0, 0), (rows - 1, cols - 1), (7, 3)):
            world = np.asarray(layer.data_to_world([k, r, c]))[::-1]
            np.testing.assert_allclose(world, _dicom_world(ds, r, c), atol=1e-3)


def test_ct_dicom_series_geometry_matches_pydicom(shared_data: Path) -> None:
    (layer,) = _layers(shared_data / "totalseg_ct" / "example_ct_dicom")
    assert layer.data.shape == (20, 512, 512)
    _check_against_headers(layer, rows=512, cols=512)


def test_study_folder_opens_each_series_as_a_layer(shared_data: Path) -> None:
    layers = _layers(shared_data / "hippocrop_dicom" / "Study3")
    assert [(ly.name, ly.data.shape) for ly in layers] == [
        ("HippoCrop", (40, 50, 34)),
        ("T2_reg", (22, 320, 280)),
    ]
    t2 = layers[1]
    assert not np.allclose(t2.affine.affine_matrix[:3, :3], np.eye(3))  # oblique series
    _check_against_headers(t2, rows=320, cols=280)


def test_single_dicom_file_opens_its_whole_series(shared_data: Path) -> None:
    folder = shared_data / "hippocrop_dicom" / "Study1" / "13_HCropVolume"
    one_file = sorted(folder.iterdir())[3]
    (data, kwargs, _), = read_layers(str(one_file))
    assert data.shape[0] == 32
    assert kwargs["name"] == "HippoCrop"


def test_reader_declines_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    assert get_reader(str(tmp_path)) is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "image.gif")) is None


def test_corrupt_nifti_raises_a_medseg_error_naming_the_file(tmp_path: Path) -> None:
    from medseg.errors import ImageReadError

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    reader = get_reader(str(bad))
    assert reader is not None
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        reader(str(bad))


def test_a_colour_png_opens_as_one_rgb_layer_without_alpha(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    rng = np.random.default_rng(4)
    rgba = rng.integers(0, 255, (30, 50, 4), dtype=np.uint8)  # rows x columns x RGBA
    rgba[..., 3] = rng.integers(0, 255, (30, 50), dtype=np.uint8)  # alpha varies
    PILImage.fromarray(rgba, mode="RGBA").save(tmp_path / "he.png")

    (data, kwargs, kind), = read_layers(str(tmp_path / "he.png"))
    assert kind == "image" and kwargs["rgb"] is True and kwargs["name"] == "he"
    np.testing.assert_array_equal(data, rgba[..., :3])
    layer = Image(data, **kwargs)
    assert layer.rgb and layer.ndim == 2
    assert layer.metadata[SHAPE_KEY] == [50, 30]  # medseg (x, y)


def test_a_real_he_image_opens_as_one_rgb_layer(shared_data: Path) -> None:
    from PIL import Image as PILImage

    path = sorted((shared_data / "dsb2018_brightfield" / "images").glob("*.png"))[0]
    layers = read_layers(str(path))
    assert len(layers) == 1
    data, kwargs, _ = layers[0]
    with PILImage.open(path) as im:
        assert np.array_equal(data, np.asarray(im.convert("RGB")))
    assert kwargs["rgb"] is True and "[c0]" not in kwargs["name"]
