"""The batch runner: outputs another library reads, records, resume, failures, DICOM SEG."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from inference_helpers import oblique_meta, tiny_card

from medseg.errors import ImageWriteError
from medseg.inference.batch import run_batch
from medseg.io import MedImage, read_dicom_seg, read_image, write_nifti
from medseg.io.atomic import (
    _HOST,
    LOCK_NAME,
    TMP_PREFIX,
    exclusive_output,
    remove_stale_temporaries,
)
from medseg.model_card import save_model

STAGES = {"read", "preprocess", "infer", "resample", "postprocess", "fit", "write", "total"}


def _inputs(tmp_path: Path, shared_data: Path | None = None) -> Path:
    root = tmp_path / "in"
    for i in range(2):
        array = np.random.default_rng(i).normal(50, 10, (1, 21, 18, 15)).astype("f4")
        write_nifti(MedImage(array, oblique_meta()), root / f"case{i}.nii.gz")
    if shared_data is not None:
        shutil.copytree(shared_data / "hippocrop_dicom" / "Study1" / "13_HCropVolume",
                        root / "mr")
    return root


def _visible(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_batch_writes_readable_outputs_records_and_resumes(
        tmp_path: Path, tiny_model_file: Path, shared_data: Path) -> None:
    root, out = _inputs(tmp_path, shared_data), tmp_path / "out"
    events: list[dict] = []
    summary = run_batch([root], tiny_model_file, out, formats=["nifti", "dicom-seg"],
                        device="cpu", on_event=events.append)
    assert summary.ok and (summary.total, summary.completed) == (3, 3)
    assert [e["event"] for e in events] == ["run_started"] + ["case_finished"] * 3 + \
        ["run_finished"]

    # NIfTI: nibabel reads the exact input geometry back
    source = nib.load(str(root / "case0.nii.gz"))
    written = nib.load(str(out / "case0.nii.gz"))
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)

    # DICOM SEG only for the DICOM case, referencing its series; same labels as the NIfTI
    record = json.loads((out / "mr.json").read_text())
    assert record["outputs"] == {"nifti": "mr.nii.gz", "dicom-seg": "mr.seg.dcm"}
    mr = read_image(root / "mr")
    seg = pydicom.dcmread(out / "mr.seg.dcm")
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == \
        mr.meta.provenance.series_instance_uid
    from_seg = read_dicom_seg(out / "mr.seg.dcm", mr).array[0]
    from_nifti = read_image(out / "mr.nii.gz").array[0]
    np.testing.assert_array_equal(from_seg, from_nifti)
    nifti_record = json.loads((out / "case1.json").read_text())
    assert "not a DICOM series (nifti)" in nifti_record["skipped_outputs"]["dicom-seg"]

    # record contents
    assert record["status"] == "ok" and set(record["timings_s"]) == STAGES
    assert record["input"]["series_instance_uid"] == mr.meta.provenance.series_instance_uid
    prov = record["provenance"]
    assert prov["model_name"] == "tiny" and prov["versions"]["medseg"]
    assert len(prov["weights_sha256"]) == 64 and len(prov["model_card_sha256"]) == 64
    assert prov["device"] == "cpu" and prov["options"]["overlap"] == 0.5
    voxel_ml = float(np.prod(mr.meta.spacing)) / 1000
    assert record["volumes_ml"]["anterior"] == pytest.approx(
        (from_nifti == 1).sum() * voxel_ml, abs=1e-6)
    assert json.loads((out / "_summary.json").read_text())["completed"] == 3
    assert not [p for p in _visible(out) if TMP_PREFIX in p]

    # resume: nothing redone, files untouched; --overwrite redoes everything
    mtimes = {p: (out / p).stat().st_mtime_ns for p in _visible(out)
              if p not in ("_summary.json", LOCK_NAME)}  # the lock names each run's pid
    again = run_batch([root], tiny_model_file, out, formats=["nifti", "dicom-seg"],
                      device="cpu")
    assert (again.already_done, again.completed) == (3, 0)
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes
    redo = run_batch([root], tiny_model_file, out, formats=["nifti"], overwrite=True,
                     device="cpu")
    assert redo.completed == 3


def test_a_failing_case_is_recorded_and_the_run_goes_on(tmp_path: Path,
                                                        tiny_model_file: Path) -> None:
    root, out = _inputs(tmp_path), tmp_path / "out"
    good = (root / "case0.nii.gz").read_bytes()
    (root / "broken.nii.gz").write_bytes(good[: len(good) // 2])  # truncated download
    (out / "stale").mkdir(parents=True)
    stale = out / "stale" / f"{TMP_PREFIX}{_HOST}-{_dead_pid()}-0123-x.nii.gz"
    stale.write_bytes(b"half")  # left by a killed run
    summary = run_batch([root], tiny_model_file, out, device="cpu")
    assert not summary.ok and summary.completed == 2
    assert list(summary.failed) == ["broken"]
    assert summary.failed["broken"].startswith(f"{root / 'broken.nii.gz'} cannot be read")
    failed = json.loads((out / "_failed" / "broken.json").read_text())
    assert failed["status"] == "failed" and failed["error_type"] == "ImageReadError"
    assert not (out / "broken.json").exists() and not (out / "broken.nii.gz").exists()
    assert not stale.exists()
    # a re-run retries the failed case only; once fixed, it succeeds and the failure goes
    (root / "broken.nii.gz").write_bytes(good)
    again = run_batch([root], tiny_model_file, out, device="cpu")
    assert (again.already_done, again.completed, again.ok) == (2, 1, True)
    assert not (out / "_failed" / "broken.json").exists()


def test_dicom_seg_alone_for_nifti_input_fails_clearly(tmp_path: Path,
                                                      tiny_model_file: Path) -> None:
    root, out = _inputs(tmp_path), tmp_path / "out"
    summary = run_batch([root / "case0.nii.gz"], tiny_model_file, out, formats=["dicom-seg"],
                        device="cpu")
    assert summary.failed["case0"] == (
        f"{root / 'case0.nii.gz'}: none of the requested formats applies: "
        f"{root / 'case0.nii.gz'} is not a DICOM series (nifti); a DICOM SEG must reference "
        "DICOM source images")


def test_new_model_weights_redo_finished_cases(tmp_path: Path, tiny_model_file: Path) -> None:
    root, out = _inputs(tmp_path), tmp_path / "out"
    assert run_batch([root], tiny_model_file, out, device="cpu").completed == 2
    card, net = tiny_card()
    for p in net.parameters():
        p.data.mul_(1.5)
    other = save_model(tmp_path / "other.safetensors", net, card)
    assert run_batch([root], other, out, device="cpu").completed == 2


def test_outputs_inside_an_input_folder_are_not_inputs_of_the_next_run(
        tmp_path: Path, tiny_model_file: Path) -> None:
    root = _inputs(tmp_path)
    out = root / "predictions"
    assert run_batch([root], tiny_model_file, out, device="cpu").completed == 2
    again = run_batch([root], tiny_model_file, out, device="cpu")
    assert (again.total, again.already_done, again.completed) == (2, 2, 0)


def test_probability_and_uncertainty_outputs_match_the_engine(tmp_path: Path,
                                                              tiny_model_file: Path) -> None:
    from medseg.inference.engine import Segmenter

    root, out = _inputs(tmp_path), tmp_path / "out"
    summary = run_batch([root], tiny_model_file, out,
                        formats=["nifti", "probabilities", "uncertainty"], device="cpu")
    assert summary.ok and summary.completed == 2
    record = json.loads((out / "case0.json").read_text())
    assert record["outputs"] == {"nifti": "case0.nii.gz",
                                 "probabilities": "case0.probabilities.nii.gz",
                                 "uncertainty": "case0.uncertainty.nii.gz"}
    expected = Segmenter.from_file(tiny_model_file, device="cpu").predict(
        read_image(root / "case0.nii.gz"), return_probabilities=True)
    source = nib.load(str(root / "case0.nii.gz"))
    probs = nib.load(str(out / "case0.probabilities.nii.gz"))
    unc = nib.load(str(out / "case0.uncertainty.nii.gz"))
    # stored as scaled uint8 on the source grid; nibabel reads floats back to within 1/255
    assert probs.get_data_dtype() == np.uint8 and unc.get_data_dtype() == np.uint8
    for img in (probs, unc):
        np.testing.assert_allclose(img.affine, source.affine, atol=1e-5)
    p = probs.get_fdata()
    assert p.shape == (*source.shape, 3)
    want = np.moveaxis(expected.probabilities.array.astype(np.float32), 0, -1)
    np.testing.assert_allclose(p, want, atol=1 / 255 + 1e-3)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=3 / 255 + 1e-3)
    # the label map is the argmax; it may differ only at near-ties of the float16 probabilities
    labels = nib.load(str(out / "case0.nii.gz")).get_fdata()
    differ = np.argmax(want, -1) != labels
    top2 = np.sort(want, -1)[..., -2:]
    assert differ.mean() < 0.01, differ.mean()
    assert np.all(top2[differ][:, 1] - top2[differ][:, 0] < 2e-3)
    np.testing.assert_allclose(unc.get_fdata(), expected.uncertainty().array[0].astype(np.float32),
                               atol=1 / 255 + 1e-3)


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_stale_temporaries_are_removed(tmp_path: Path) -> None:
    live = tmp_path / f"{TMP_PREFIX}{_HOST}-{os.getpid()}-aaaa-x.nii.gz"  # this process's
    dead = tmp_path / f"{TMP_PREFIX}{_HOST}-{_dead_pid()}-bbbb-x.nii.gz"
    foreign_new = tmp_path / f"{TMP_PREFIX}otherhost-12-cccc-x.nii.gz"
    foreign_old = tmp_path / f"{TMP_PREFIX}otherhost-13-dddd-x.nii.gz"
    for p in (live, dead, foreign_new, foreign_old):
        p.write_bytes(b"partial")
    old = time.time() - 7 * 3600
    os.utime(foreign_old, (old, old))
    assert remove_stale_temporaries(tmp_path) == 2
    assert live.exists() and foreign_new.exists()
    assert not dead.exists() and not foreign_old.exists()


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path: Path,
                                                            tiny_model_file: Path) -> None:
    root, out = _inputs(tmp_path), tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from medseg.io.atomic import exclusive_output\n"
        f"with exclusive_output({str(out)!r}):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ImageWriteError, match=rf"is in use by another medseg run \(pid "
                                                  rf"{holder.pid} on "):
            run_batch([root], tiny_model_file, out, device="cpu")
        assert not (out / "_summary.json").exists()
    finally:
        holder.kill()
        holder.wait()
    summary = run_batch([root], tiny_model_file, out, device="cpu")  # the lock died with it
    assert summary.ok and summary.completed == 2
    with exclusive_output(out):  # and this run released its own
        pass


def test_resume_redoes_cases_made_with_other_options(tmp_path: Path,
                                                    tiny_model_file: Path) -> None:
    from medseg.inference.postprocess import PostprocessConfig

    root, out = _inputs(tmp_path), tmp_path / "out"
    first = run_batch([root], tiny_model_file, out, device="cpu")
    assert first.completed == 2
    same = run_batch([root], tiny_model_file, out, device="cpu")
    assert (same.already_done, same.completed) == (2, 0)
    tta = run_batch([root], tiny_model_file, out, device="cpu", tta=True)
    assert (tta.already_done, tta.completed) == (0, 2)  # made without TTA: redone
    record = json.loads((out / f"{tta.records[0].case_id}.json").read_text())
    assert record["provenance"]["options"]["tta"] is True
    overlap = run_batch([root], tiny_model_file, out, device="cpu", tta=True, overlap=0.25)
    assert overlap.completed == 2
    keep = run_batch([root], tiny_model_file, out, device="cpu", tta=True, overlap=0.25,
                     postprocess=PostprocessConfig(keep_largest=True))
    assert keep.completed == 2
    again = run_batch([root], tiny_model_file, out, device="cpu", tta=True, overlap=0.25,
                      postprocess=PostprocessConfig(keep_largest=True))
    assert (again.already_done, again.completed) == (2, 0)
    holes = run_batch([root], tiny_model_file, out, device="cpu", tta=True, overlap=0.25,
                      postprocess=PostprocessConfig(keep_largest=True, fill_holes=True))
    assert holes.completed == 2  # made without filling holes: redone
    record = json.loads((out / f"{holes.records[0].case_id}.json").read_text())
    assert record["provenance"]["options"]["fill_holes"] is True


def test_resume_takes_a_record_made_before_fill_holes_existed(tmp_path: Path,
                                                              tiny_model_file: Path) -> None:
    from medseg.inference.postprocess import PostprocessConfig

    root, out = _inputs(tmp_path), tmp_path / "out"
    assert run_batch([root], tiny_model_file, out, device="cpu").completed == 2
    for f in out.glob("*.json"):  # as an older medseg wrote them: no fill_holes option
        record = json.loads(f.read_text())
        if "provenance" in record:
            del record["provenance"]["options"]["fill_holes"]
            f.write_text(json.dumps(record))
    again = run_batch([root], tiny_model_file, out, device="cpu")
    assert (again.already_done, again.completed) == (2, 0)
    filled = run_batch([root], tiny_model_file, out, device="cpu",
                       postprocess=PostprocessConfig(fill_holes=True))
    assert (filled.already_done, filled.completed) == (0, 2)
