"""Input discovery (files, folders, manifests) and safe, stable case ids."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import oblique_meta

from medseg.errors import MedsegError
from medseg.inference.cases import discover_cases, safe_case_id
from medseg.io import MedImage, write_nifti

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@pytest.mark.parametrize("text", [
    "../../etc/passwd", "Study 1/séries:3", "a" * 300, "....", "/", "..\\..\\win",
    "PATIENT^NAME<script>", "-rf", "x/./y",
])
def test_safe_case_id_is_restricted_bounded_and_not_hidden(text: str) -> None:
    case_id = safe_case_id(text)
    assert SAFE.match(case_id), case_id
    assert len(case_id) <= 100
    assert safe_case_id(text) == case_id  # stable across runs


def _nifti(path: Path, seed: int = 0) -> Path:
    array = np.random.default_rng(seed).normal(size=(1, 12, 10, 8)).astype("f4")
    return write_nifti(MedImage(array, oblique_meta()), path)


def test_folder_discovery_names_cases_by_relative_path(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "in"
    _nifti(root / "site A" / "case_01.nii.gz")
    _nifti(root / "case_02.nii")
    shutil.copytree(shared_data / "hippocrop_dicom" / "Study1", root / "dicom" / "Study1")
    cases = discover_cases([root])
    by_id = {c.case_id: c for c in cases}
    assert set(by_id) == {"site_A_case_01", "case_02", "dicom_Study1_13_HCropVolume"}
    dicom = by_id["dicom_Study1_13_HCropVolume"]
    assert dicom.kind == "dicom" and dicom.series_uid and dicom.error is None


def test_two_series_in_one_folder_get_distinct_hashed_ids(tmp_path: Path,
                                                          shared_data: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for study in ("Study1", "Study2"):
        for f in (shared_data / "hippocrop_dicom" / study).rglob("*.dcm"):
            shutil.copy(f, mixed / f"{study}_{f.name}")
    cases = discover_cases([mixed])
    assert len(cases) == 2 and len({c.series_uid for c in cases}) == 2
    assert all(re.fullmatch(r"mixed-[0-9a-f]{8}", c.case_id) for c in cases)
    assert len({c.case_id for c in cases}) == 2


def test_manifests_csv_and_json(tmp_path: Path) -> None:
    a = _nifti(tmp_path / "imgs" / "a.nii.gz")
    _nifti(tmp_path / "imgs" / "b.nii.gz", seed=1)
    csv = tmp_path / "list.csv"
    csv.write_text("path,case_id\nimgs/a.nii.gz,Patient 7 / visit 1\nimgs/b.nii.gz,\n"
                   "imgs/missing.nii.gz,\n")
    cases = discover_cases([csv])
    assert [c.case_id for c in cases] == ["Patient_7_visit_1", "imgs_b", "imgs_missing"]
    assert cases[0].path == a and cases[0].error is None
    assert cases[2].error is not None and cases[2].error.endswith("missing.nii.gz does not exist")

    js = tmp_path / "list.json"
    js.write_text('["imgs/a.nii.gz", {"path": "imgs/b.nii.gz", "case_id": "bee"}]')
    assert [c.case_id for c in discover_cases([js])] == ["imgs_a", "bee"]
    # the same image named twice (file + manifest) is one case
    assert len(discover_cases([a, js])) == 2


def test_bad_manifest_raises_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"')
    with pytest.raises(MedsegError, match=r"manifest .*bad.json cannot be read"):
        discover_cases([bad])
    nopath = tmp_path / "nopath.csv"
    nopath.write_text("file\nx.nii.gz\n")
    with pytest.raises(MedsegError, match=r"nopath.csv: entries \[1\] have no 'path'"):
        discover_cases([nopath])


def test_colliding_ids_are_disambiguated(tmp_path: Path) -> None:
    first = _nifti(tmp_path / "x.nii.gz")
    second = _nifti(tmp_path / "X.nii", seed=2)
    cases = discover_cases([first, second])
    ids = [c.case_id for c in cases]
    assert len(set(i.lower() for i in ids)) == 2  # distinct even on case-insensitive disks
    assert all(re.fullmatch(r"[xX]-[0-9a-f]{8}", i) for i in ids)
    assert discover_cases([first, second]) == cases  # deterministic


def test_missing_input_becomes_a_failed_case(tmp_path: Path) -> None:
    (case,) = discover_cases([tmp_path / "nope.nii.gz"])
    assert case.case_id == "nope" and case.error == f"{tmp_path / 'nope.nii.gz'} does not exist"
    (empty,) = discover_cases([tmp_path])
    assert empty.error == f"{tmp_path}: no DICOM series or image files found"


def test_a_damaged_dicom_folder_fails_alone_and_good_folders_stay_cases(
        tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "in"
    shutil.copytree(shared_data / "hippocrop_dicom" / "Study1", root / "good" / "Study1")
    bad = root / "bad"
    shutil.copytree(shared_data / "hippocrop_dicom" / "Study2", bad)
    (bad / "14_HCropVolume" / "zero.dcm").write_bytes(b"")  # a zero-byte file among slices
    cases = discover_cases([root])
    good = [c for c in cases if c.error is None]
    failed = [c for c in cases if c.error is not None]
    assert [c.case_id for c in good] == ["good_Study1_13_HCropVolume"]
    assert len(failed) == 1 and failed[0].path.is_relative_to(bad)
    assert failed[0].kind == "dicom" and "\n" not in failed[0].error
    assert "zero.dcm" in failed[0].error or "empty" in failed[0].error.lower()


def test_hidden_image_files_are_skipped_with_a_warning(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    _nifti(root / "case.nii.gz")
    for name in (".hidden.nii.gz", "..nii.gz", "...nii.gz"):
        _nifti(root / name)
    (root / ".notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="medseg.inference.cases"):
        cases = discover_cases([root])
    assert [c.case_id for c in cases] == ["case"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "skipped 3 hidden image file(s)" in warning
    assert ".hidden.nii.gz" in warning and "..nii.gz" in warning and "...nii.gz" in warning
    named = discover_cases([root / ".hidden.nii.gz", root / "..nii.gz", root / "...nii.gz"])
    assert len(named) == 3 and all(c.error is None for c in named)  # named: segmented
    assert all(SAFE.match(c.case_id) for c in named)


def test_one_file_under_two_case_ids_in_a_manifest_warns(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    _nifti(tmp_path / "a.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,case_id\na.nii.gz,first\na.nii.gz,second\n")
    with caplog.at_level("WARNING", logger="medseg.inference.cases"):
        cases = discover_cases([manifest])
    assert [c.case_id for c in cases] == ["first"]
    assert any("listed twice, as 'first' and 'second'" in r.getMessage() for r in caplog.records)
