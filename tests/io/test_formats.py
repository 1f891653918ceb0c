"""NIfTI, NRRD/MHA, PNG/TIFF readers and writers, checked against nibabel, SimpleITK, PIL."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image
from synthetic_io import ct_volume, oblique_meta

from medseg.errors import ImageReadError, ImageWriteError
from medseg.io import (
    ImageMeta,
    MedImage,
    find_dicom_series,
    find_image_files,
    is_image_file,
    list_dicom_series,
    read_dicom_series,
    read_image,
    write_dicom_series,
    write_itk_image,
    write_nifti,
)
from medseg.io.atomic import TMP_PREFIX


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_roundtrip_oblique(tmp_path, suffix):
    image = ct_volume()
    path = write_itk_image(image, tmp_path / f"x{suffix}")
    img = sitk.ReadImage(str(path))  # SimpleITK directly: (k, j, i) array, LPS geometry
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).T, image.array[0])
    np.testing.assert_allclose(img.GetOrigin(), image.meta.origin, atol=1e-9)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)),
                               image.meta.direction_matrix, atol=1e-12)
    # voxel (3, 5, 7): SimpleITK's own index->world agrees with medseg's
    np.testing.assert_allclose(img.TransformIndexToPhysicalPoint((3, 5, 7)),
                               image.meta.index_to_world(np.array([[3, 5, 7]]))[0], atol=1e-9)
    back = read_image(path)
    assert back.meta.same_grid(image.meta, atol_mm=1e-9)
    np.testing.assert_array_equal(back.array, image.array)


def test_itk_vector_image_becomes_channels(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, size=(3, 6, 7, 8)).astype(np.uint8)
    image = MedImage(arr, oblique_meta())
    back = read_image(write_itk_image(image, tmp_path / "v.mha"))
    assert back.array.shape == (3, 6, 7, 8)
    np.testing.assert_array_equal(back.array, arr)


def test_nifti_label_map_is_uint8_with_sform_and_qform(tmp_path):
    image = ct_volume()
    labels = image.with_array((image.array > 150).astype(np.int64), label_names={1: "sphere"})
    path = write_nifti(labels, tmp_path / "labels.nii.gz")
    nii = nib.load(str(path))
    assert nii.get_data_dtype() == np.uint8
    sform, scode = nii.header.get_sform(coded=True)
    qform, qcode = nii.header.get_qform(coded=True)
    assert (scode, qcode) == (1, 1)
    np.testing.assert_allclose(sform, image.meta.affine_ras(), atol=1e-5)  # float32 storage
    np.testing.assert_allclose(qform, image.meta.affine_ras(), atol=1e-5)
    # nibabel's voxel -> RAS world equals medseg's LPS world with x, y negated
    ras = nib.affines.apply_affine(nii.affine, [[4, 5, 6]])[0]
    lps = image.meta.index_to_world(np.array([[4, 5, 6]]))[0]
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), labels.array[0])
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]  # no temporary left
    many = labels.with_array(labels.array * 300)
    assert nib.load(str(write_nifti(many, tmp_path / "m.nii"))).get_data_dtype() == np.uint16


def test_nifti_writer_rejects_bad_targets(tmp_path):
    image = ct_volume()
    with pytest.raises(ImageWriteError, match=r"out\.nrrd: a NIfTI file name must end in"):
        write_nifti(image, tmp_path / "out.nrrd")
    with pytest.raises(ImageWriteError, match=r"values -\d+\.\.\d+ do not fit uint8"):
        write_nifti(image, tmp_path / "out.nii.gz", dtype=np.uint8)
    assert not any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())


def test_nifti_2d_writes_one_slice(tmp_path):
    meta = ImageMeta(spacing=(0.5, 0.25), origin=(1.0, 2.0), direction=((1.0, 0.0), (0.0, 1.0)))
    image = MedImage(np.arange(12, dtype=np.float32).reshape(1, 3, 4), meta)
    nii = nib.load(str(write_nifti(image, tmp_path / "two.nii.gz")))
    assert nii.shape == (3, 4, 1)
    np.testing.assert_allclose(nib.affines.apply_affine(nii.affine, [2, 3, 0]),
                               [-(1.0 + 2 * 0.5), -(2.0 + 3 * 0.25), 0.0])


def test_png_and_tiff_2d(tmp_path, shared_data):
    png = shared_data / "isbi2012_em" / "train" / "image" / "0.png"
    image = read_image(png)
    pixels = np.asarray(Image.open(png))
    assert image.array.shape == (1, 512, 512) and image.meta.spacing == (1.0, 1.0)
    np.testing.assert_array_equal(image.array[0], pixels.T)  # axis 0 = x = columns
    tif = shared_data / "dsb2018_stardist_sample" / "mask2d.tif"
    mask = read_image(tif)
    np.testing.assert_array_equal(mask.array[0], tifffile.imread(tif).T)
    assert mask.array.dtype == np.uint16 and mask.meta.provenance.format == "tiff"
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)  # rows, cols, c
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    colour = read_image(tmp_path / "rgb.png")
    assert colour.array.shape == (3, 7, 5)
    np.testing.assert_array_equal(colour.array[1], rgb[:, :, 1].T)


def test_rescale_slope_intercept_applied(shared_data):
    folder = shared_data / "dcmqi_ct3slice_seg" / "ct-3slice"
    image = read_dicom_series(folder)
    for k, f in enumerate(image.meta.provenance.files):
        ds = pydicom.dcmread(f)
        assert float(ds.RescaleIntercept) == -1024.0
        hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_array_equal(image.array[0, :, :, k], hu.T)


def test_discovery(tmp_path, shared_data):
    write_dicom_series(ct_volume((6, 5, 4)), tmp_path / "a" / "b")
    write_dicom_series(ct_volume((6, 5, 3)), tmp_path / "a" / "b", modality="MR")
    write_nifti(ct_volume(), tmp_path / "c.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    found = find_dicom_series(tmp_path)
    assert sorted(s.num_instances for s in found) == [3, 4]
    assert all(s.folder == tmp_path / "a" / "b" for s in found)
    assert find_image_files(tmp_path) == [tmp_path / "c.nii.gz"]
    assert is_image_file(tmp_path / "c.nii.gz") and not is_image_file(tmp_path / "notes.txt")
    assert is_image_file(found[0].files[0])
    assert list_dicom_series(tmp_path) == []
    assert len(list_dicom_series(tmp_path, recursive=True)) == 2
    real = find_dicom_series(shared_data / "hippocrop_dicom")
    assert sorted(s.num_instances for s in real) == [22, 32, 35, 40]
    assert {s.modality for s in real} == {"MR"}


@pytest.mark.parametrize("kind", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("scaled", [False, True])
def test_nifti_gz_fast_inflate_matches_nibabel(tmp_path, monkeypatch, kind, scaled):
    """ISA-L's in-memory inflate (when installed) reads the same voxels, scaling, geometry
    and memory layout as nibabel's own loader, for NIfTI-1 and NIfTI-2."""
    import medseg.io.nifti as nifti

    if nifti._fast_gunzip() is None:
        pytest.skip("isal is not installed (optional: pip install medseg[fast-io])")
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, size=(7, 6, 5), dtype=np.int16)
    affine = np.array([[0, -0.7, 0, 10], [0.9, 0, 0.1, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    img = kind(data, affine)
    if scaled:
        img.header.set_slope_inter(0.5, -3.0)
    path = tmp_path / "v.nii.gz"
    nib.save(img, str(path))
    fast = read_image(path)
    monkeypatch.setattr(nifti, "_fast_gunzip", lambda: None)
    slow = read_image(path)
    assert fast.array.dtype == slow.array.dtype
    assert fast.array.flags.f_contiguous == slow.array.flags.f_contiguous
    np.testing.assert_array_equal(fast.array, slow.array)
    assert fast.meta.spacing == slow.meta.spacing
    assert fast.meta.origin == slow.meta.origin
    assert fast.meta.direction == slow.meta.direction


def test_nifti_gz_damaged_reads_as_clear_error_either_way(tmp_path, monkeypatch):
    import medseg.io.nifti as nifti

    path = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[:-40])  # gzip trailer and some deflate data gone
    loaders = [nifti._fast_gunzip, lambda: None]
    for loader in loaders:
        monkeypatch.setattr(nifti, "_fast_gunzip", loader)
        with pytest.raises(ImageReadError, match=r"cut\.nii\.gz cannot be read as NIfTI"):
            read_image(path)
