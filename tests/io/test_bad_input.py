"""Bad input gives a medseg error that names the file and the problem, never a deep traceback."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from synthetic_io import ct_volume

from medseg.errors import GeometryError, ImageReadError
from medseg.io import (
    ImageMeta,
    list_dicom_series,
    read_dicom_series,
    read_image,
    write_dicom_series,
)

AXIAL_2MM = ImageMeta(spacing=(0.5, 0.5, 2.0), origin=(0.0, 0.0, 0.0),
                      direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def _series(folder: Path, *, meta: ImageMeta = AXIAL_2MM, slices: int = 10, **kw) -> list[Path]:
    return write_dicom_series(ct_volume((9, 8, slices), meta=meta), folder, **kw)


def _non_image(folder: Path, sop_class: str, modality: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{modality}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(ImageReadError, match=r"nowhere does not exist"):
        read_image(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match=r"empty holds no DICOM files"):
        read_image(tmp_path / "empty")
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    (tmp_path / "empty" / "README.md").touch()  # empty, but plainly not DICOM: skipped
    (tmp_path / "empty" / "blob").write_bytes(b"\x00\x01 not dicom" * 50)
    with pytest.raises(ImageReadError, match=r"empty holds no DICOM files"):
        read_image(tmp_path / "empty")


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nrrd", "scan.png", "IM0001.dcm"])
def test_zero_byte_file(tmp_path, name):
    (tmp_path / name).touch()
    pattern = rf"{name.replace('.', '[.]')} is an empty \(zero-byte\)"
    with pytest.raises(ImageReadError, match=pattern):
        read_image(tmp_path / name)


def test_zero_byte_file_inside_a_series(tmp_path):
    _series(tmp_path / "s", slices=4)
    (tmp_path / "s" / "IM9999").touch()
    with pytest.raises(ImageReadError, match=r"IM9999 is an empty \(zero-byte\) file"):
        read_image(tmp_path / "s")


def test_truncated_files(tmp_path, shared_data):
    folder = tmp_path / "ct"
    shutil.copytree(shared_data / "dcmqi_ct3slice_seg" / "ct-3slice", folder)
    target = folder / "02.dcm"
    target.chmod(0o644)
    data = target.read_bytes()
    target.write_bytes(data[:300_000])  # pixel data cut short
    with pytest.raises(ImageReadError, match=r"02\.dcm is a damaged DICOM file \(truncated or "
                                             r"corrupt header: element \(7FE0,0010\) needs "
                                             r"524288 bytes .* the file ends at 300000"):
        read_image(folder)  # found from the header scan, before any pixel is decoded
    target.write_bytes(data[:1000])  # header cut short: pydicom alone would stop quietly
    with pytest.raises(ImageReadError, match=r"02\.dcm is a damaged DICOM file \(truncated .* "
                                             r"the file ends at 1000"):
        read_image(folder)
    src = shared_data / "totalseg_ct" / "example_ct_sm.nii.gz"
    (tmp_path / "cut.nii.gz").write_bytes(src.read_bytes()[:20_000])
    with pytest.raises(ImageReadError, match=r"cut\.nii\.gz cannot be read as NIfTI"):
        read_image(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize(("sop_class", "modality", "kind"), [
    ("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT", r"RT Structure Set \(RTSTRUCT\)"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "SR", r"Structured Report \(SR\)"),
])
def test_non_image_dicom_where_an_image_is_expected(tmp_path, sop_class, modality, kind):
    path = _non_image(tmp_path / "obj", sop_class, modality)
    for target in (tmp_path / "obj", path):
        with pytest.raises(ImageReadError, match=rf"holds no DICOM image series, only {kind}"):
            read_image(target)


def test_seg_where_an_image_is_expected(tmp_path, shared_data):
    seg = shared_data / "dcmqi_ct3slice_seg" / "seg_dicom" / "liver.dcm"
    with pytest.raises(ImageReadError, match=r"liver\.dcm holds no DICOM image series, only "
                                             r"DICOM Segmentation \(SEG\) objects"):
        read_image(seg)
    # beside its CT, the SEG is ignored and the CT is read
    folder = tmp_path / "mixed"
    shutil.copytree(shared_data / "dcmqi_ct3slice_seg" / "ct-3slice", folder)
    shutil.copy(seg, folder / "seg.dcm")
    assert read_image(folder).spatial_shape == (512, 512, 3)
    assert [s.kind for s in list_dicom_series(folder)] == ["image", "DICOM Segmentation (SEG)"]


def test_mixed_series_need_a_choice(tmp_path, caplog):
    big = _series(tmp_path, slices=6, series_description="big")
    small = _series(tmp_path, slices=4, modality="MR", series_description="small")
    uid_big = pydicom.dcmread(big[0]).SeriesInstanceUID
    uid_small = pydicom.dcmread(small[0]).SeriesInstanceUID
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path)
    msg = str(err.value)
    assert f"{tmp_path} holds 2 DICOM image series; choose one with series_uid" in msg
    assert f"{uid_big} (CT 'big', 6 files)" in msg and f"{uid_small} (MR 'small', 4 files)" in msg
    assert read_image(tmp_path, series_uid=uid_small).spatial_shape == (9, 8, 4)
    with caplog.at_level(logging.WARNING, logger="medseg.io.dicom_series"):
        chosen = read_dicom_series(tmp_path, strict=False)
    assert chosen.meta.provenance.series_instance_uid == uid_big
    assert "reading the largest" in caplog.text
    with pytest.raises(ImageReadError, match=r"has no series 1\.2\.3; it holds: "):
        read_image(tmp_path, series_uid="1.2.3")
    infos = list_dicom_series(tmp_path)
    assert [(i.series_uid, i.num_instances) for i in infos] == [(uid_big, 6), (uid_small, 4)]


def test_missing_slices(tmp_path):
    files = _series(tmp_path)  # z = 0, 2, ..., 18 mm
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    files[5].unlink()  # z = 10
    files[6].unlink()  # z = 12
    with pytest.raises(GeometryError, match=rf"series {uid} in {tmp_path} has 2 missing slices "
                                            r"between z=8\.0 and z=14\.0 mm"):
        read_image(tmp_path)


def test_two_gaps_are_both_reported(tmp_path):
    files = _series(tmp_path)
    files[2].unlink()  # z = 4
    files[7].unlink()  # z = 14
    with pytest.raises(GeometryError, match=r"has 1 missing slice between z=2\.0 and z=6\.0 mm "
                                            r"\(expected a slice every 2\.000 mm; 1 more gap "):
        read_image(tmp_path)


def test_slices_of_different_sizes(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.1"
    _series(tmp_path / "s", slices=3, series_instance_uid=uid)
    (odd,) = write_dicom_series(ct_volume((9, 7, 1), meta=AXIAL_2MM.replace(
        origin=(0.0, 0.0, 6.0))), tmp_path / "other", series_instance_uid=uid)
    odd.rename(tmp_path / "s" / "odd.dcm")
    with pytest.raises(GeometryError, match=r"slices have different sizes \(rows, columns\)"):
        read_image(tmp_path / "s")


def test_non_uniform_spacing(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[4])
    ds.ImagePositionPatient = [0, 0, 8.7]
    ds.save_as(files[4])
    with pytest.raises(GeometryError, match=r"has non-uniform slice spacing: 2\.700 mm between "
                                            r"z=6\.0 and z=8\.7 mm, but 2\.000 mm elsewhere"):
        read_image(tmp_path)


def test_duplicate_positions(tmp_path):
    files = _series(tmp_path, slices=4)
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "copy.dcm")
    with pytest.raises(GeometryError, match=r"two slices share the position 4\.000 mm"):
        read_image(tmp_path)


def test_gantry_tilt(tmp_path):
    tilt = np.deg2rad(10.0)
    sheared = AXIAL_2MM.replace(direction=((1.0, 0.0, 0.0), (0.0, 1.0, np.sin(tilt)),
                                           (0.0, 0.0, np.cos(tilt))))
    _series(tmp_path, meta=sheared)
    with pytest.raises(GeometryError, match=r"gantry tilt of about 10\.00 degrees"):
        read_image(tmp_path)


def test_mixed_orientations(tmp_path):
    files = _series(tmp_path, slices=3)
    ds = pydicom.dcmread(files[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(files[1])
    with pytest.raises(GeometryError, match="slices have different orientations"):
        read_image(tmp_path)


def test_4d_nifti_where_3d_is_expected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 2), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(GeometryError, match=r"t\.nii is 4D \(shape \(5, 6, 7, 2\)\) but a single "
                                            r"3D volume is expected"):
        read_image(tmp_path / "t.nii")
    assert read_image(tmp_path / "t.nii", allow_channels=True).array.shape == (2, 5, 6, 7)
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 1), np.float32), np.eye(4)), tmp_path / "s.nii")
    assert read_image(tmp_path / "s.nii").array.shape == (1, 5, 6, 7)  # singleton time axis


def test_nan_and_inf_voxels(tmp_path):
    arr = np.ones((5, 6, 7), np.float32)
    arr[1, 2, 3] = np.nan
    arr[4, 4, 4] = np.inf
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ImageReadError, match=r"nan\.nii\.gz: 2 voxels are NaN or infinite"):
        read_image(tmp_path / "nan.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(arr.T), str(tmp_path / "nan.mha"))
    with pytest.raises(ImageReadError, match=r"nan\.mha: 2 voxels are NaN or infinite"):
        read_image(tmp_path / "nan.mha")


def test_not_an_image_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match=r"notes\.txt is not a DICOM file"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match=r"bad\.png cannot be decoded as an image"):
        read_image(tmp_path / "bad.png")
    with gzip.open(tmp_path / "junk.nii.gz", "wb") as f:
        f.write(b"junk" * 100)
    with pytest.raises(ImageReadError, match=r"junk\.nii\.gz cannot be read as NIfTI"):
        read_image(tmp_path / "junk.nii.gz")


@pytest.mark.parametrize(("tag", "change"), [
    ("BitsAllocated", lambda ds: 8),  # 16-bit pixels read as 8-bit: half the values
    ("BitsAllocated", lambda ds: 32),
    ("Rows", lambda ds: ds.Rows + 1),  # every slice claims one more row than it holds
    ("Columns", lambda ds: ds.Columns - 1),
])
def test_pixel_data_that_does_not_fit_the_header_is_refused(tmp_path: Path, tag: str,
                                                            change) -> None:
    files = _series(tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        setattr(ds, tag, change(ds))
        ds.save_as(f)
    with pytest.raises(ImageReadError, match=r"PixelData holds \d+ bytes but Rows"):
        read_dicom_series(tmp_path / "s")


def _nifti_file(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_complex_and_rgb_nifti_are_refused_by_name(tmp_path: Path) -> None:
    z = np.ones((4, 4, 3), np.complex64)
    with pytest.raises(ImageReadError, match=r"complex-valued voxels \(complex64\)"):
        read_image(_nifti_file(tmp_path / "c.nii.gz", z))
    rgb = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    with pytest.raises(ImageReadError, match="RGB/structured voxels"):
        read_image(_nifti_file(tmp_path / "rgb.nii.gz", rgb))


@pytest.mark.parametrize("pixdim", [[1, 0.0, 1, 1, 1, 0, 0, 0], [1, 1, np.nan, 1, 1, 0, 0, 0]])
def test_zero_or_nan_voxel_size_without_sform_or_qform_is_refused(tmp_path: Path,
                                                                   pixdim) -> None:
    img = nib.Nifti1Image(np.ones((4, 4, 3), np.int16), None)  # sform and qform codes 0
    path = tmp_path / "p.nii"
    nib.save(img, str(path))
    data = bytearray(path.read_bytes())  # pixdim as a damaged file stores it (offset 76)
    data[76:108] = np.asarray(pixdim, "<f4").tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(GeometryError, match="no sform or qform: its geometry is unknown"):
        read_image(path)


def test_singular_sform_is_refused(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.ones((4, 4, 3), np.int16), None)
    img.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # a zero column: j has no direction
    nib.save(img, str(tmp_path / "s.nii.gz"))
    with pytest.raises(GeometryError, match="singular or non-finite affine"):
        read_image(tmp_path / "s.nii.gz")


def test_5d_nifti_names_its_axes(tmp_path: Path) -> None:
    path = _nifti_file(tmp_path / "5d.nii.gz", np.ones((4, 4, 3, 2, 2), np.int16))
    with pytest.raises(GeometryError, match=r"has 5 axes \(shape \(4, 4, 3, 2, 2\)"):
        read_image(path)


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _nifti_file(tmp_path / "big.nii.gz", np.zeros((64, 64, 64), np.uint8))
    assert path.stat().st_size < 10_000  # tiny file, 262,144 voxels
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "100000")
    with pytest.raises(ImageReadError, match=r"announces 262,144 voxels .* above the limit of "
                                             r"100,000; raise MEDSEG_MAX_VOXELS"):
        read_image(path)
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "300000")
    assert read_image(path).spatial_shape == (64, 64, 64)


def test_an_exception_without_message_still_gives_a_reason() -> None:
    from medseg.errors import describe_exception

    assert describe_exception(ValueError("")) == "ValueError"
    assert describe_exception(OSError("line 1\nlast line")) == "last line"
