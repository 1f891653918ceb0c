"""Fixtures for the I/O tests: small seeded volumes on oblique grids, written as DICOM."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_io import ct_volume

from medseg.io import MedImage, write_dicom_series


@pytest.fixture
def ct_image() -> MedImage:
    return ct_volume()


@pytest.fixture
def ct_series(tmp_path: Path, ct_image: MedImage) -> tuple[MedImage, Path]:
    folder = tmp_path / "ct"
    write_dicom_series(ct_image, folder, modality="CT")
    return ct_image, folder
