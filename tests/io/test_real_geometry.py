"""Geometry proofs against real files in ../shared/data, each checked with a second library."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.io import read_dicom_series, read_image, write_nifti
from medseg.io.image import LPS_TO_RAS


def _ipp(path: str) -> np.ndarray:
    return np.array([float(v) for v in pydicom.dcmread(path, stop_before_pixels=True)
                     .ImagePositionPatient])


def test_jpeg2000_ct_series_and_its_nifti_twin_agree_in_physical_space(shared_data):
    folder = shared_data / "totalseg_ct" / "example_ct_dicom"
    nifti_path = shared_data / "totalseg_ct" / "example_seg_dicom.nii.gz"
    ct = read_image(folder)
    assert ct.array.shape == (1, 512, 512, 20)
    assert ct.array.min() == -1024 and ct.array.max() == 1839  # rescale applied (SOURCE.txt)
    # pydicom: slice k of the array is the file whose IPP is index (0, 0, k)
    for k in (0, 7, 19):
        np.testing.assert_allclose(ct.meta.index_to_world(np.array([[0, 0, k]]))[0],
                                   _ipp(ct.meta.provenance.files[k]), atol=1e-6)
    # nibabel (second library): every DICOM voxel centre, mapped through nibabel's RAS affine,
    # lands on a NIfTI voxel centre to 1e-3 mm; the NIfTI is stored y-flipped (LAS).
    nii = nib.load(str(nifti_path))
    rng = np.random.default_rng(0)
    idx = np.concatenate([
        np.array(np.meshgrid([0, 511], [0, 511], [0, 19], indexing="ij")).reshape(3, -1).T,
        np.column_stack([rng.integers(0, 512, 5000), rng.integers(0, 512, 5000),
                         rng.integers(0, 20, 5000)]),
    ])
    world_ras = ct.meta.index_to_world(idx) * np.array([-1.0, -1.0, 1.0])
    nidx = nib.affines.apply_affine(np.linalg.inv(nii.affine), world_ras)
    on_grid = nib.affines.apply_affine(nii.affine, np.round(nidx))
    assert np.abs(on_grid - world_ras).max() < 1e-3
    np.testing.assert_array_equal(np.round(nidx), idx * [1, -1, 1] + [0, 511, 0])
    # medseg's own NIfTI reader puts the same voxel at the same place
    seg = read_image(nifti_path)
    np.testing.assert_allclose(seg.meta.index_to_world(np.round(nidx)),
                               ct.meta.index_to_world(idx), atol=1e-3)
    # and the content lines up: mean HU inside liver (5) and aorta (52), SOURCE.txt: 89 and 177
    on_ct = np.asarray(nii.dataobj)[:, ::-1, :]
    names = json.loads((shared_data / "totalseg_ct" / "labels_total.json").read_text())
    assert names["5"] == "liver" and names["52"] == "aorta"
    assert abs(ct.array[0][on_ct == 5].mean() - 89) < 3
    assert abs(ct.array[0][on_ct == 52].mean() - 177) < 5


@pytest.mark.parametrize("sub", ["Study1/13_HCropVolume", "Study3/37830-T2reg-78532"])
def test_mr_series_geometry_matches_pydicom(shared_data, sub):
    folder = shared_data / "hippocrop_dicom" / sub
    image = read_dicom_series(folder)
    files = image.meta.provenance.files
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_sp, col_sp = (float(v) for v in first.PixelSpacing)
    assert image.meta.spacing[:2] == (col_sp, row_sp)
    d = image.meta.direction_matrix
    np.testing.assert_allclose(d[:, 0], iop[:3], atol=1e-9)
    np.testing.assert_allclose(d[:, 1], iop[3:], atol=1e-9)
    np.testing.assert_allclose(d[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-9)
    # every slice: the file pydicom says is at IPP_k is array slice k, at index (0, 0, k)
    assert len(files) == image.spatial_shape[2] == len({str(f) for f in files})
    positions = np.array([_ipp(f) for f in files])
    np.testing.assert_allclose(
        image.meta.index_to_world(np.column_stack([np.zeros(len(files)), np.zeros(len(files)),
                                                   np.arange(len(files))])),
        positions, atol=1e-3)
    last = pydicom.dcmread(files[-1])
    np.testing.assert_array_equal(last.pixel_array.T, image.array[0, :, :, -1])


def test_t2_series_is_oblique(shared_data):
    image = read_image(shared_data / "hippocrop_dicom" / "Study3" / "37830-T2reg-78532")
    d = image.meta.direction_matrix
    assert abs(d[1, 2]) > 0.1  # tilted about the x axis: oblique orientation handled
    assert image.meta.spacing[2] == pytest.approx(6.5, abs=1e-4)


@pytest.mark.parametrize("name", ["totalseg_ct/example_mr_sm.nii.gz",
                                  "msd_hippocampus/imagesTr/hippocampus_003.nii.gz",
                                  "msd_hippocampus/labelsTr/hippocampus_001.nii.gz"])
def test_nifti_roundtrip_keeps_affine_exactly(shared_data, tmp_path, name):
    src = shared_data / name
    image = read_image(src)
    out = write_nifti(image, tmp_path / "out.nii.gz")
    a, b = nib.load(str(src)), nib.load(str(out))
    np.testing.assert_array_equal(b.affine, a.affine)
    np.testing.assert_array_equal(b.header.get_sform(), a.affine)
    assert b.header.get_sform(coded=True)[1] == 1 and b.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(b.header.get_qform(), a.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(b.dataobj), np.asanyarray(a.dataobj))
    # and medseg's LPS geometry is nibabel's RAS affine with x and y negated
    np.testing.assert_allclose(LPS_TO_RAS @ image.meta.affine, a.affine, atol=1e-12)
    assert read_image(out).meta.same_grid(image.meta, atol_mm=1e-9)
