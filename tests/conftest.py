"""Shared fixtures: the real data folder, seeded synthetic volumes, marker handling."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$MEDSEG_SHARED_DATA`` or ``../shared/data`` beside the repository, if present."""
    env = os.environ.get("MEDSEG_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder ../shared/data (or $MEDSEG_SHARED_DATA) is absent")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def make_sphere_volume(
    shape: tuple[int, ...] = (33, 34, 35), *, radius: float = 8.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded noisy sphere: (image float32, label uint8) of the given spatial shape."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [s / 2 + rng.uniform(-2, 2) for s in shape]
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
    label = (dist <= radius).astype(np.uint8)
    image = (label * 100.0 + rng.normal(0, 20, size=shape)).astype(np.float32)
    return image, label
