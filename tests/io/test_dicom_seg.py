"""DICOM SEG: dcmqi's examples read onto their CT; medseg's SEGs checked by highdicom, pydicom,
dciodvfy and dcmqi's segimage2itkimage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.errors import GeometryError, ImageReadError, ImageWriteError
from medseg.io import (
    MedImage,
    Provenance,
    read_dicom_seg,
    read_image,
    write_dicom_seg,
    write_nifti,
)

DCMQI_BIN = Path(sys.executable).parent / "segimage2itkimage"


def _nrrd(path: Path) -> np.ndarray:
    """NRRD label map via SimpleITK directly, in (i, j, k) order."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T


@pytest.fixture(scope="module")
def ct3(shared_data):
    return read_image(shared_data / "dcmqi_ct3slice_seg" / "ct-3slice")


def test_dcmqi_liver_seg_equals_nrrd(shared_data, ct3):
    base = shared_data / "dcmqi_ct3slice_seg"
    seg = read_dicom_seg(base / "seg_dicom" / "liver.dcm", ct3)
    nrrd_img = sitk.ReadImage(str(base / "seg_nrrd" / "liver_seg.nrrd"))
    # same physical grid (NRRD origin written with fewer digits)
    np.testing.assert_allclose(nrrd_img.GetOrigin(), ct3.meta.origin, atol=1e-3)
    np.testing.assert_allclose(nrrd_img.GetSpacing(), ct3.meta.spacing, atol=1e-6)
    assert seg.meta.label_names == {1: "Liver"}
    np.testing.assert_array_equal(seg.array[0], _nrrd(base / "seg_nrrd" / "liver_seg.nrrd"))
    assert int(seg.array.sum()) == 107098
    # mapping by frame index onto the files in name order would be wrong: 01.dcm is the top
    # slice (k = 2) while the SEG's first frame is the bottom slice (k = 0)
    ds = pydicom.dcmread(base / "seg_dicom" / "liver.dcm")
    z0 = float(ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
               .ImagePositionPatient[2])
    assert z0 == pytest.approx(ct3.meta.origin[2], abs=1e-4)
    assert Path(ct3.meta.provenance.files[2]).name == "01.dcm"
    np.testing.assert_array_equal(seg.array[0, :, :, 0], ds.pixel_array[0].T)
    assert not np.array_equal(seg.array[0, :, :, 2], ds.pixel_array[0].T)


def test_dcmqi_overlapping_segments(shared_data, ct3):
    base = shared_data / "dcmqi_ct3slice_seg"
    path = base / "seg_dicom" / "partial_overlaps.dcm"
    nrrds = [_nrrd(base / "seg_nrrd" / f"partial_overlaps-{n}.nrrd") for n in (1, 2, 3)]
    channels = read_dicom_seg(path, ct3, as_channels=True)
    assert channels.array.shape == (5, 512, 512, 3)
    for s in range(1, 6):
        expected = sum((n == s) for n in nrrds).astype(np.uint8)
        assert expected.sum() > 4000
        np.testing.assert_array_equal(channels.array[s - 1], expected)
    # label map: where segments overlap the highest segment number wins
    labels = read_dicom_seg(path, ct3)
    np.testing.assert_array_equal(labels.array[0], np.maximum.reduce(nrrds))
    assert labels.meta.label_names[4] == "LIGHT_BLUE"
    assert int((channels.array.sum(axis=0) > 1).sum()) > 0  # there really are overlaps


def _write_liver_spine_seg(shared_data, ct3, path: Path):
    base = shared_data / "dcmqi_ct3slice_seg"
    mask = _nrrd(base / "seg_nrrd" / "liver_spine_seg.nrrd").astype(np.uint8)
    labels = ct3.with_array(mask[None], label_names={1: "liver", 2: "spine"})
    write_dicom_seg(labels, ct3, path, label_colors={1: (200, 80, 60)},
                    algorithm_name="unit-test", algorithm_version="9.9")
    return labels


def test_written_seg_read_back_by_highdicom_and_pydicom(shared_data, ct3, tmp_path):
    labels = _write_liver_spine_seg(shared_data, ct3, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesInstanceUID != ct3.meta.provenance.series_instance_uid
    assert seg.StudyInstanceUID == ct3.meta.provenance.study_instance_uid
    assert seg.FrameOfReferenceUID == ct3.meta.provenance.frame_of_reference_uid
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
            for r in s.ReferencedInstanceSequence}
    assert refs == set(ct3.meta.provenance.sop_instance_uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == \
        ct3.meta.provenance.series_instance_uid
    descs = {d.SegmentNumber: d for d in seg.SegmentSequence}
    assert descs[1].SegmentLabel == "liver" and descs[2].SegmentLabel == "spine"
    assert descs[1].SegmentAlgorithmType == "AUTOMATIC"
    alg = descs[1].SegmentationAlgorithmIdentificationSequence[0]
    assert (alg.AlgorithmName, alg.AlgorithmVersion) == ("unit-test", "9.9")
    assert hd.color.CIELabColor.from_dicom_value(
        descs[1].RecommendedDisplayCIELabValue).to_rgb() == pytest.approx((200, 80, 60), abs=1)
    # frames matched to CT slices by ImagePositionPatient (pydicom, not medseg)
    frames = seg.pixel_array
    z_of_k = {round(float(v), 3): k for k, v in
              enumerate(ct3.meta.index_to_world(np.array([[0, 0, k] for k in range(3)]))[:, 2])}
    seen = 0
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = z_of_k[round(float(item.PlanePositionSequence[0].ImagePositionPatient[2]), 3)]
        s = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frames[f].T, labels.array[0, :, :, k] == s)
        seen += int(frames[f].sum())
    assert seen == int((labels.array > 0).sum())
    # and medseg's own reader restores the label map exactly
    back = read_dicom_seg(tmp_path / "seg.dcm", ct3)
    np.testing.assert_array_equal(back.array, labels.array)
    assert back.meta.label_names == {1: "liver", 2: "spine"}


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_written_segs_pass_dciodvfy(shared_data, ct3, ct_series, tmp_path):
    _write_liver_spine_seg(shared_data, ct3, tmp_path / "a.dcm")
    assert _dciodvfy_errors(tmp_path / "a.dcm") == []
    image, folder = ct_series
    source = read_image(folder)
    labels = source.with_array((source.array > 150).astype(np.uint8),
                               label_names={1: "sphere", 2: "absent"})
    write_dicom_seg(labels, source, tmp_path / "b.dcm")
    assert _dciodvfy_errors(tmp_path / "b.dcm") == []
    # a real oblique MR series as the source
    t2 = read_image(shared_data / "hippocrop_dicom" / "Study3" / "37830-T2reg-78532")
    mask = (t2.array > np.percentile(t2.array, 90)).astype(np.uint8)
    write_dicom_seg(t2.with_array(mask), t2, tmp_path / "c.dcm", label_names={1: "bright"})
    assert _dciodvfy_errors(tmp_path / "c.dcm") == []
    back = read_dicom_seg(tmp_path / "c.dcm", t2)
    np.testing.assert_array_equal(back.array, mask)
    # a HippoCrop MR series whose files omit the Type 2 PatientBirthDate/PatientSex
    crop = read_image(shared_data / "hippocrop_dicom" / "Study1" / "13_HCropVolume")
    half = np.zeros(crop.array.shape, np.uint8)
    half[..., : crop.spatial_shape[2] // 2] = 1
    write_dicom_seg(crop.with_array(half), crop, tmp_path / "d.dcm", label_names={1: "lower"})
    assert _dciodvfy_errors(tmp_path / "d.dcm") == []
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "d.dcm", crop).array, half)


@pytest.mark.skipif(not DCMQI_BIN.exists(), reason="dcmqi segimage2itkimage not installed")
def test_dcmqi_reads_our_seg_onto_the_nifti_voxels(ct_series, tmp_path):
    _, folder = ct_series
    source = read_image(folder)  # synthetic oblique CT, 35 slices
    mask = np.zeros(source.array.shape, np.uint8)
    mask[source.array > 150] = 1
    mask[0, 3:9, 4:12, 5:30] = 2
    labels = source.with_array(mask, label_names={1: "sphere", 2: "box"})
    write_dicom_seg(labels, source, tmp_path / "seg.dcm")
    write_nifti(labels, tmp_path / "labels.nii.gz")
    out = tmp_path / "dcmqi"
    out.mkdir()
    subprocess.run([str(DCMQI_BIN), "--inputDICOM", str(tmp_path / "seg.dcm"),
                    "--outputDirectory", str(out), "-t", "nrrd"], check=True,
                   capture_output=True)
    nii = nib.load(str(tmp_path / "labels.nii.gz"))
    ours = np.asarray(nii.dataobj)
    total = 0
    for number in (1, 2):
        img = sitk.ReadImage(str(out / f"{number}.nrrd"))
        arr = sitk.GetArrayFromImage(img).T  # (i, j, k)
        idx = np.argwhere(arr > 0)
        # dcmqi voxel -> world (SimpleITK geometry, LPS) -> our NIfTI voxel (nibabel, RAS)
        d = np.reshape(img.GetDirection(), (3, 3))
        world = idx * np.asarray(img.GetSpacing()) @ d.T + np.asarray(img.GetOrigin())
        nidx = nib.affines.apply_affine(np.linalg.inv(nii.affine), world * [-1, -1, 1])
        assert np.abs(nidx - np.round(nidx)).max() < 1e-3
        nidx = np.round(nidx).astype(int)
        assert np.all(ours[tuple(nidx.T)] == number)
        total += len(idx)
        assert len(idx) == int((ours == number).sum())
    assert total == int((ours > 0).sum()) > 1000


def test_seg_errors(shared_data, ct3, tmp_path, ct_image):
    base = shared_data / "dcmqi_ct3slice_seg"
    with pytest.raises(ImageReadError, match=r"01\.dcm is not a DICOM Segmentation"):
        read_dicom_seg(base / "ct-3slice" / "01.dcm", ct3)
    other_for = ct3.meta.replace(provenance=Provenance(frame_of_reference_uid="1.2.3"))
    msg = r"liver\.dcm is in frame of reference 1\.2\.392\..*the reference image in 1\.2\.3;"
    with pytest.raises(GeometryError, match=msg):
        read_dicom_seg(base / "seg_dicom" / "liver.dcm", MedImage(ct3.array, other_for))
    labels = ct3.with_array(np.zeros(ct3.array.shape, np.uint8), label_names={1: "x"})
    with pytest.raises(ImageWriteError, match="not read from a DICOM series"):
        write_dicom_seg(labels, ct_image, tmp_path / "x.dcm")
    with pytest.raises(ImageWriteError, match=r"label values \[7\] have no name"):
        bad = labels.array.copy()
        bad[0, 0, 0, 0] = 7
        write_dicom_seg(ct3.with_array(bad), ct3, tmp_path / "x.dcm", label_names={1: "x"})
    shifted = ct3.meta.replace(origin=(0.0, 0.0, 0.0))
    with pytest.raises(ImageWriteError, match="not on the source series grid"):
        write_dicom_seg(MedImage(labels.array, shifted), ct3, tmp_path / "x.dcm")
    ct_nouid = read_image(shared_data / "totalseg_ct" / "example_ct_dicom")
    with pytest.raises(ImageWriteError, match="has no StudyInstanceUID, SeriesInstanceUID"):
        write_dicom_seg(ct_nouid.with_array(np.ones(ct_nouid.array.shape, np.uint8)), ct_nouid,
                        tmp_path / "x.dcm", label_names={1: "body"})
    assert not (tmp_path / "x.dcm").exists()
