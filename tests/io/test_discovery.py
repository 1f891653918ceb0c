import pytest
from synthetic_io import ct_volume

from medseg.errors import ImageReadError
from medseg.io import find_dicom_series, write_dicom_series


def test_find_dicom_series_skips_damaged_folder_when_collecting_errors(tmp_path):
    write_dicom_series(ct_volume((8, 9, 5)), tmp_path / "good" / "a", modality="CT")
    bad = tmp_path / "bad"
    write_dicom_series(ct_volume((8, 9, 4), seed=1), bad, modality="CT")
    (bad / "zero.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match="zero.dcm"):
        find_dicom_series(tmp_path)
    errors: list = []
    found = find_dicom_series(tmp_path, errors=errors)
    assert [s.folder.name for s in found] == ["a"] and found[0].num_instances == 5
    assert len(errors) == 1 and errors[0][0] == bad and "zero.dcm" in errors[0][1]
