"""Seeded synthetic volumes on oblique grids for the I/O tests (imported by tests and conftest)."""

from __future__ import annotations

import numpy as np

from medseg.io import ImageMeta, MedImage


def oblique_meta(spacing=(0.7, 0.8, 2.5), *, degrees: float = 17.0) -> ImageMeta:
    """A grid rotated about two axes, with anisotropic spacing and an off-centre origin."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    rx = np.array([[1.0, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rz @ rx
    return ImageMeta(spacing=spacing, origin=(-120.0, 33.5, 7.25),
                     direction=tuple(tuple(float(v) for v in r) for r in rot))


def ct_volume(shape=(33, 34, 35), *, seed: int = 0, meta: ImageMeta | None = None) -> MedImage:
    """Integer 'HU' volume with a bright sphere, on an oblique grid."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    dist = np.sqrt(sum((g - s / 2) ** 2 for g, s in zip(grids, shape, strict=True)))
    arr = np.where(dist < 8, 300, -50) + rng.integers(-30, 30, size=shape)
    return MedImage(arr.astype(np.int16)[None], meta or oblique_meta())


