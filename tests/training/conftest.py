"""Fixtures for the training tests (the data builders live in training_data.py, so that test
modules import them by a unique module name instead of ``conftest``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_data import write_folder2d, write_msd


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "msd", 5)


@pytest.fixture
def folder2d_dataset(tmp_path: Path) -> Path:
    return write_folder2d(tmp_path / "em", 6)
