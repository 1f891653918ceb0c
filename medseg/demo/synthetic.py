"""Seeded, CT-like synthetic abdomen studies with lesions of known extent.

The generator builds an axial abdominal CT in Hounsfield units: air, a body ellipse with a
subcutaneous fat layer over soft tissue, a spine and a contrast-filled aorta, a lumpy liver
and a few irregular hypodense lesions ("lumpy spheres") inside it, plus Gaussian noise.
Edges are soft (a sigmoid of an approximate signed distance) so the image has partial-volume
blur without an extra filtering pass.

In-plane anatomy is laid out relative to the in-plane field of view (as a scanner's display
field of view is fitted to the body), and the liver's cranio-caudal extent is fixed in mm with
the slab of slices centred on it; so the same seed at 0.8 mm and at 1.6 mm describes the same
patient, and a thin slab simply shows less of the liver (its lesions are placed inside it).
Generation works in chunks of slices with broadcasting (no full-volume coordinate grids),
keeping memory near the size of the two outputs (int16 image + uint8 labels): a
512x512x200 volume needs about 160 MB and a few seconds.

MONAI's ``monai.data.synthetic.create_test_image_3d`` draws isotropic blobs in a unit grid; it
has no physical geometry, tissue intensities or lesion bookkeeping, hence this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medseg.errors import ConfigError
from medseg.io.image import ImageMeta, MedImage, Provenance

logger = logging.getLogger(__name__)

LABEL_NAMES: dict[int, str] = {0: "background", 1: "liver", 2: "lesion"}
LIVER_LABEL = 1
LESION_LABEL = 2

# Typical portal-venous-phase CT values (HU).
HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT_TISSUE = 45.0
HU_BONE = 450.0
HU_AORTA = 190.0
HU_LIVER = 115.0
LIVER_CC_SEMI_AXIS_MM = 80.0  # cranio-caudal half-length of the liver
EDGE_WIDTH_MM = 0.4  # sigmoid width of tissue boundaries (partial-volume blur)
CHUNK_VOXELS = 1 << 21  # voxels processed at once (bounds temporary memory to ~50 MB)


@dataclass(frozen=True)
class Lesion:
    """One synthetic lesion, as generated.

    Attributes:
        centre_mm: World (LPS, mm) position of the lesion's centre.
        radius_mm: Mean radius before the lumpy deformation.
        contrast_hu: Lesion intensity minus liver intensity (negative: hypodense).
        voxels: Voxels labelled as this lesion on the generated grid.
        volume_ml: ``voxels`` times the voxel volume, in millilitres.
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    contrast_hu: float
    voxels: int
    volume_ml: float


@dataclass(frozen=True)
class SyntheticStudy:
    """A synthetic CT and its exact ground truth on the same grid.

    Attributes:
        image: ``(1, X, Y, Z)`` int16 Hounsfield units.
        label: ``(1, X, Y, Z)`` uint8 with :data:`LABEL_NAMES` (1 liver, 2 lesion).
        lesions: The lesions, in generation order.
        seed: Seed that reproduces this study.
    """

    image: MedImage
    label: MedImage
    lesions: tuple[Lesion, ...]
    seed: int


@dataclass(frozen=True)
class _Blob:
    """A lumpy ellipsoid: axis semi-lengths modulated by Gaussian bumps on the unit sphere."""

    centre: np.ndarray  # (3,) mm, relative to the field-of-view centre
    semi_axes: np.ndarray  # (3,) mm
    bump_dirs: np.ndarray  # (n, 3) unit vectors
    bump_heights: np.ndarray  # (n,) relative radius change at each bump

    @property
    def reach(self) -> np.ndarray:
        """Half-extent of a box that surely contains the blob, per axis (mm)."""
        return self.semi_axes * (1.0 + float(np.clip(self.bump_heights, 0, None).sum())) + 1.0

    def signed_distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) at broadcastable coordinates."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        ex, ey, ez = dx / self.semi_axes[0], dy / self.semi_axes[1], dz / self.semi_axes[2]
        rho = np.sqrt(ex * ex + ey * ey + ez * ez) + np.float32(1e-6)
        scale = np.ones_like(rho)
        for (vx, vy, vz), h in zip(self.bump_dirs, self.bump_heights, strict=True):
            cos = (ex * vx + ey * vy + ez * vz) / rho
            scale += np.float32(h) * np.exp((cos - 1.0) / np.float32(0.12))
        return (rho / scale - 1.0) * np.float32(self.semi_axes.min())


def _soft(d: np.ndarray) -> np.ndarray:
    """Occupancy in [0, 1] from a signed distance (1 inside, 0.5 on the boundary)."""
    return 1.0 / (1.0 + np.exp(np.clip(d / np.float32(EDGE_WIDTH_MM), -30, 30)))


def _random_blob(rng: np.random.Generator, centre: np.ndarray, semi_axes: np.ndarray,
                 *, n_bumps: int, amplitude: float) -> _Blob:
    dirs = rng.normal(size=(n_bumps, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    heights = rng.uniform(-amplitude, amplitude * 1.3, size=n_bumps)
    return _Blob(centre.astype(np.float32), semi_axes.astype(np.float32), dirs, heights)


def _place_lesions(rng: np.random.Generator, liver: _Blob, n_lesions: int, *,
                   min_radius_mm: float, half_fov_z: float) -> list[_Blob]:
    """Lesions inside the liver's core and the scanned slab, apart from each other.

    Best-candidate sampling: of 128 random candidates, keep the one farthest from the lesions
    already placed (Mitchell's algorithm), so placement never loops and stays seeded.
    """
    lesions: list[_Blob] = []
    base = float(liver.semi_axes[:2].min())
    for _ in range(n_lesions):
        r = rng.uniform(0.12, 0.26) * base
        r = max(min(r, half_fov_z / 1.4), min_radius_mm)  # fit the slab if it is thin
        u = rng.normal(size=(128, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        cands = liver.centre + u * rng.uniform(0.15, 0.6, size=(128, 1)) * liver.semi_axes
        while True:
            # Clearance: the gap left to every placed lesion (bumps included) and to the
            # slab ends; a crowded liver gets a smaller lesion rather than an overlap.
            clearance = half_fov_z - 1.3 * r - np.abs(cands[:, 2])
            for o in lesions:
                gap = np.linalg.norm(cands - o.centre, axis=1) - 1.3 * (r + o.semi_axes[0]) - 2.0
                clearance = np.minimum(clearance, gap)
            best = int(np.argmax(clearance))
            if clearance[best] > 0:
                break
            if r <= min_radius_mm:
                raise ConfigError(
                    f"cannot place {n_lesions} separate lesions of radius >= "
                    f"{min_radius_mm:.1f} mm in the synthetic liver; ask for fewer lesions or "
                    "a larger field of view"
                )
            r = max(0.85 * r, min_radius_mm)
        lesions.append(_random_blob(rng, cands[best], np.full(3, r), n_bumps=5, amplitude=0.18))
    return lesions


def make_ct_study(
    shape: tuple[int, int, int] = (512, 512, 64),
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    *,
    seed: int = 0,
    n_lesions: int = 3,
    noise_hu: float = 12.0,
    origin: tuple[float, float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticStudy:
    """Generate a seeded CT-like abdomen with a liver and hypodense lesions.

    Args:
        shape: Grid size ``(X, Y, Z)`` in ITK index order (columns, rows, slices).
        spacing: Voxel size in mm, same order; anisotropic spacing is the point.
        seed: Seeds anatomy, lesion shapes, intensities and noise.
        n_lesions: Number of separate lesions inside the liver.
        noise_hu: Standard deviation of the Gaussian image noise (HU).
        origin: World (LPS) position of voxel ``(0, 0, 0)``; by default the field of view is
            centred near the world origin with a seeded, non-zero offset, like a scanner's.
        progress: Called as ``progress(done, total)`` with slices generated so far.

    Returns:
        The image (int16 HU), its label map (1 liver, 2 lesion) and the lesion list.

    Raises:
        ConfigError: If the shape or spacing is not 3D and positive, or the lesions do not fit.

    Examples:
        >>> s = make_ct_study((64, 60, 16), (3.0, 3.0, 5.0), seed=1, n_lesions=2)
        >>> s.image.array.dtype, s.label.array.shape, len(s.lesions)
        (dtype('int16'), (1, 64, 60, 16), 2)
    """
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
        raise ConfigError(f"synthetic study needs a positive 3D shape and spacing, "
                          f"got shape {shape} and spacing {spacing}")
    rng = np.random.default_rng(seed)
    shp = np.asarray(shape, dtype=np.int64)
    sp = np.asarray(spacing, dtype=np.float64)
    fov = shp * sp
    if origin is None:
        offset = rng.uniform(-25.0, 25.0, size=3).round(2)
        origin = tuple(float(v) for v in -(shp - 1) * sp / 2 + offset)
    # Coordinates (mm) relative to the field-of-view centre, per axis, float32 for speed.
    axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32)
            for n, s in zip(shp, sp, strict=True)]
    x = axes[0][:, None, None]
    y = axes[1][None, :, None]

    a, b = 0.42 * fov[0], 0.31 * fov[1]  # body semi-axes
    jitter = rng.uniform(0.95, 1.05, size=4)
    body = np.sqrt((x / (a * jitter[0])) ** 2 + (y / (b * jitter[1])) ** 2)[..., 0]
    d_body = (body - 1.0) * np.float32(min(a, b))
    inner = (body - (1.0 - 0.07 * jitter[2])) * np.float32(min(a, b))  # fat layer ~7%
    spine = np.hypot(x[..., 0], y[..., 0] - 0.62 * b) - 0.13 * b
    aorta = np.hypot(x[..., 0] - 0.12 * a, y[..., 0] - 0.36 * b) - 0.065 * b
    liver = _random_blob(
        rng,
        np.array([-0.38 * a, -0.12 * b, rng.uniform(-8.0, 8.0)]),
        np.array([0.45 * a, 0.58 * b, LIVER_CC_SEMI_AXIS_MM]) * rng.uniform(0.93, 1.07, size=3),
        n_bumps=6, amplitude=0.10,
    )
    lesions = _place_lesions(rng, liver, n_lesions, min_radius_mm=1.2 * float(sp.max()),
                             half_fov_z=float(fov[2]) / 2)
    contrasts = rng.uniform(-75.0, -45.0, size=len(lesions))

    # In-plane background: air, fat, soft tissue, bone, aorta (constant along z).
    plane = np.full(shape[:2], HU_AIR, np.float32)
    for d, hu in ((d_body, HU_FAT), (inner, HU_SOFT_TISSUE), (spine, HU_BONE), (aorta, HU_AORTA)):
        m = _soft(d.astype(np.float32))
        plane += (np.float32(hu) - plane) * m

    image = np.empty((1, *shape), np.int16)
    label = np.zeros((1, *shape), np.uint8)
    voxels = np.zeros(len(lesions), np.int64)
    chunk = max(1, CHUNK_VOXELS // int(shp[0] * shp[1]))
    noise_rng = np.random.default_rng([seed, 1])
    for k0 in range(0, shape[2], chunk):
        k1 = min(shape[2], k0 + chunk)
        vol = np.repeat(plane[..., None], k1 - k0, axis=2)
        lab = np.zeros(vol.shape, np.uint8)
        _paint(vol, lab, liver, axes, k0, HU_LIVER, LIVER_LABEL)
        for n, (blob, contrast) in enumerate(zip(lesions, contrasts, strict=True)):
            voxels[n] += _paint(vol, lab, blob, axes, k0, HU_LIVER + contrast, LESION_LABEL)
        vol += noise_rng.standard_normal(size=vol.shape, dtype=np.float32) * np.float32(noise_hu)
        np.clip(vol, -1024, 3071, out=vol)
        image[0, :, :, k0:k1] = np.rint(vol).astype(np.int16)
        label[0, :, :, k0:k1] = lab
        if progress is not None:
            progress(k1, shape[2])

    meta = ImageMeta(
        spacing=tuple(float(s) for s in sp),
        origin=tuple(float(o) for o in origin),
        direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        provenance=Provenance(format="synthetic", modality="CT",
                              series_description=f"medseg synthetic abdomen seed {seed}"),
    )
    voxel_ml = float(np.prod(sp)) / 1000.0
    centre_world = np.asarray(origin) + (shp - 1) * sp / 2  # identity direction
    lesion_records = tuple(
        Lesion(
            centre_mm=tuple(float(c) for c in centre_world + blob.centre),
            radius_mm=float(blob.semi_axes[0]),
            contrast_hu=float(c),
            voxels=int(v),
            volume_ml=float(v) * voxel_ml,
        )
        for blob, c, v in zip(lesions, contrasts, voxels, strict=True)
    )
    logger.debug("synthetic study seed %d: %s, lesions %s", seed, shape,
                 [round(r.volume_ml, 2) for r in lesion_records])
    return SyntheticStudy(
        image=MedImage(image, meta),
        label=MedImage(label, meta.replace(label_names=dict(LABEL_NAMES))),
        lesions=lesion_records,
        seed=seed,
    )


def _paint(vol: np.ndarray, lab: np.ndarray, blob: _Blob, axes: list[np.ndarray], k0: int,
           hu: float, label: int) -> int:
    """Blend ``blob`` into a chunk of slices starting at ``k0``, inside its bounding box only.

    Returns the number of voxels labelled ``label``.
    """
    box = []
    for ax, (coords, c, r) in enumerate(zip(axes, blob.centre, blob.reach, strict=True)):
        lo = int(np.searchsorted(coords, c - r, side="left"))
        hi = int(np.searchsorted(coords, c + r, side="right"))
        if ax == 2:
            lo, hi = max(lo, k0) - k0, min(hi, k0 + vol.shape[2]) - k0
        if hi <= lo:
            return 0
        box.append(slice(lo, hi))
    bx, by, bz = box
    d = blob.signed_distance(axes[0][bx, None, None], axes[1][None, by, None],
                             axes[2][None, None, k0 + bz.start:k0 + bz.stop])
    sub = vol[bx, by, bz]
    sub += (np.float32(hu) - sub) * _soft(d)
    inside = d <= 0
    lab[bx, by, bz][inside] = label
    return int(inside.sum())
