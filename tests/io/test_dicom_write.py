"""write_dicom_series -> read back with medseg, pydicom and SimpleITK; dciodvfy validity."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from synthetic_io import ct_volume, oblique_meta

from medseg.errors import ImageWriteError
from medseg.io import ImageMeta, MedImage, read_dicom_series, read_image, write_dicom_series


def test_ct_series_roundtrip_exact(ct_series):
    image, folder = ct_series
    back = read_image(folder)
    assert back.array.shape == image.array.shape
    np.testing.assert_array_equal(back.array, image.array)
    assert back.meta.same_grid(image.meta, atol_mm=1e-4)
    assert back.meta.provenance.modality == "CT"
    assert len(back.meta.provenance.files) == 35


def test_headers_read_by_pydicom_match_grid(ct_series):
    image, folder = ct_series
    back = read_dicom_series(folder)
    d = image.meta.direction_matrix
    for k, f in enumerate(back.meta.provenance.files):
        ds = pydicom.dcmread(f)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(ipp, image.meta.index_to_world(np.array([[0, 0, k]]))[0],
                                   atol=1e-3)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                                   np.concatenate([d[:, 0], d[:, 1]]), atol=1e-6)
        assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.7]
        assert ds.pixel_array.dtype == np.int16
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu.T, image.array[0, :, :, k])
        assert ds.SOPInstanceUID == back.meta.provenance.sop_instance_uids[k]


def test_simpleitk_reads_same_geometry(ct_series):
    image, folder = ct_series
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    img = sitk.ReadImage(files)
    np.testing.assert_allclose(img.GetOrigin(), image.meta.origin, atol=1e-3)
    np.testing.assert_allclose(img.GetSpacing(), image.meta.spacing, atol=1e-4)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)),
                               image.meta.direction_matrix, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).T, image.array[0])


def test_float_mr_uses_rescale(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.uniform(0.0, 1.7e6, size=(1, 9, 10, 11)).astype(np.float32)
    image = MedImage(arr, oblique_meta((1.0, 1.0, 1.0)))
    write_dicom_series(image, tmp_path / "mr", modality="MR")
    back = read_image(tmp_path / "mr")
    assert back.meta.provenance.modality == "MR"
    slope = float(pydicom.dcmread(back.meta.provenance.files[0]).RescaleSlope)
    np.testing.assert_allclose(back.array, arr, atol=slope / 2 + 1e-3 * slope, rtol=1e-6)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_written_series_passes_dciodvfy(tmp_path, modality):
    files = write_dicom_series(ct_volume((9, 8, 3)), tmp_path / "s", modality=modality)
    out = subprocess.run(["dciodvfy", str(files[1])], capture_output=True, text=True)
    errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
    assert errors == []


def test_writer_rejects_bad_input(tmp_path):
    meta = ImageMeta.identity(3)
    with pytest.raises(ImageWriteError, match="modality 'PT' is not supported"):
        write_dicom_series(MedImage(np.zeros((1, 4, 4, 4)), meta), tmp_path, modality="PT")
    with pytest.raises(ImageWriteError, match=r"one-channel 3D image, got array shape \(2, 4, 4"):
        write_dicom_series(MedImage(np.zeros((2, 4, 4, 4)), meta), tmp_path)
    arr = np.zeros((1, 4, 4, 4))
    arr[0, 1, 1, 1] = np.nan
    with pytest.raises(ImageWriteError, match="NaN/inf"):
        write_dicom_series(MedImage(arr, meta), tmp_path)
