"""Batched data augmentation in torch: one call transforms a whole batch of patches.

On a 2-core CPU, per-sample MONAI dictionary transforms cost more than the network step for
small 3D patches; here every augmentation is a tensor operation over the batch (one
``affine_grid`` + ``grid_sample`` for rotation, zoom and elastic deformation together, masked
flips, vectorised intensity changes). Randomness comes only from the run's ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medseg.errors import ConfigError
from medseg.training.config import AugmentConfig


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def _rotation_matrices(angles: torch.Tensor, dims: int) -> torch.Tensor:
    """``(B, dims, dims)`` rotations; ``angles`` is ``(B, 1)`` in 2D and ``(B, 3)`` in 3D."""
    b = angles.shape[0]
    if dims == 2:
        c, s = torch.cos(angles[:, 0]), torch.sin(angles[:, 0])
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], 1)
    out = torch.eye(3).repeat(b, 1, 1)
    for axis in range(3):
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        i, j = [a for a in range(3) if a != axis]
        r = torch.eye(3).repeat(b, 1, 1)
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        out = out @ r
    return out


def _spatial_grid(shape: tuple[int, ...], config: AugmentConfig, g: torch.Generator,
                  batch: int) -> torch.Tensor | None:
    """Sampling grid for rotation + zoom + elastic, or ``None`` when no sample needs one."""
    dims = len(shape)
    use_affine = torch.rand(batch, generator=g) < config.affine_prob
    use_elastic = torch.rand(batch, generator=g) < config.elastic_prob
    if not bool(use_affine.any() or use_elastic.any()):
        return None
    n_angles = 1 if dims == 2 else 3
    max_rad = math.radians(config.rotation_deg)
    angles = _uniform((batch, n_angles), -max_rad, max_rad, g)
    zoom = _uniform((batch,), config.scale[0], config.scale[1], g)
    linear = _rotation_matrices(angles, dims) / zoom[:, None, None]
    linear = torch.where(use_affine[:, None, None], linear, torch.eye(dims).expand_as(linear))
    # affine_grid works in normalised coordinates ordered (last axis, ..., first axis); rotate
    # in voxel units so non-cubic patches are not sheared: theta = S^-1 R S.
    half = torch.tensor([s / 2.0 for s in reversed(shape)])
    theta = torch.zeros(batch, dims, dims + 1)
    theta[:, :, :dims] = linear / half[None, :, None] * half[None, None, :]
    grid = F.affine_grid(theta, [batch, 1, *shape], align_corners=False)
    if bool(use_elastic.any()) and config.elastic_magnitude > 0:
        coarse = [max(2, int(round(1.0 / max(config.elastic_sigma, 1e-3)))) for _ in shape]
        noise = torch.randn((batch, dims, *coarse), generator=g)
        mode = "bilinear" if dims == 2 else "trilinear"
        field = F.interpolate(noise, size=shape, mode=mode, align_corners=True)
        field = field * config.elastic_magnitude / half.flip(0).view(1, dims, *([1] * dims))
        # channel c of the field displaces spatial axis c; the grid's last axis is reversed.
        field = field.flip(1).movedim(1, -1) * use_elastic.view(batch, *([1] * (dims + 1)))
        grid = grid + field
    return grid


def augment_batch(image: torch.Tensor, label: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch ``image (B, C, *S)`` float, ``label (B, 1, *S)`` int64 together.

    Spatial changes (rotation, zoom, elastic, flips, rot90) hit image and label alike (labels
    by nearest neighbour); intensity changes hit the image only. Out-of-patch samples are
    filled by reflection, consistent with mirror padding. With ``config.label_offset`` set,
    the label is resampled so it stays displaced by that vector from the image structures.
    """
    g = generator
    batch, shape = image.shape[0], tuple(image.shape[2:])
    dims = len(shape)
    offset = config.label_offset
    if any(offset):
        if len(offset) != dims:
            raise ConfigError(f"augment.label_offset has {len(offset)} values for "
                              f"{dims}D patches")
        image, label = _augment_spatial_offset(image, label, config, g, offset)
        return _augment_intensity(image, config, g), label
    grid = _spatial_grid(shape, config, g, batch)
    if grid is not None:
        image = F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection",
                              align_corners=False)
        label = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="reflection",
                              align_corners=False).long()
    image, label = _mirror_rot90([image, label], 2, shape, config, g)
    return _augment_intensity(image, config, g), label


def _mirror_rot90(tensors: list[torch.Tensor], first: int, shape: tuple[int, ...],
                  config: AugmentConfig, g: torch.Generator) -> list[torch.Tensor]:
    """The same random flips (``config.flip_axes``, each with probability 0.5) and multiples of
    90 degrees (plane of the first two spatial axes) per sample, applied to every tensor of
    ``tensors``: batch first, the spatial axes ``shape`` from dimension ``first`` on."""
    batch, dims = tensors[0].shape[0], len(shape)
    for axis in config.flip_axes:
        if not 0 <= axis < dims:
            continue
        flip = torch.rand(batch, generator=g) < 0.5
        tensors = [torch.where(flip.view((batch,) + (1,) * (t.dim() - 1)), t.flip(axis + first), t)
                   for t in tensors]
    if config.rot90 and shape[0] == shape[1]:
        ks = torch.randint(0, 4, (batch,), generator=g).tolist()
        tensors = [torch.stack([torch.rot90(x, k, (first - 1, first))
                                for x, k in zip(t, ks, strict=True)]) for t in tensors]
    return tensors


def _augment_spatial_offset(image: torch.Tensor, label: torch.Tensor, config: AugmentConfig,
                            g: torch.Generator, offset: list[float]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The spatial part of :func:`augment_batch` for labels displaced by ``offset`` voxels.

    Every change (rotation, zoom, elastic, flips, rot90) is folded into one sampling grid
    ``T``: the image is sampled at ``T(p)``. A label ``L(p) = S(p - d)`` of structures ``S``
    must come out as ``S'(p - d)`` with ``S'(p) = S(T(p))``, i.e. be sampled at
    ``T(p - d) + d``; ``T(p - d)`` is taken to first order from the grid's own derivatives
    (exact for flips, rot90 and the affine part, and the elastic field is smooth).
    """
    batch, shape = image.shape[0], tuple(image.shape[2:])
    dims = len(shape)
    grid = _spatial_grid(shape, config, g, batch)
    if grid is None:
        eye = torch.eye(dims, dims + 1).expand(batch, dims, dims + 1)
        grid = F.affine_grid(eye, [batch, 1, *shape], align_corners=False)
    # flips and rot90 of the output are the same flips/rotations of the sampling grid
    (grid,) = _mirror_rot90([grid], 1, shape, config, g)
    # grid component c addresses spatial axis dims-1-c, in units of 2/size
    d_norm = torch.tensor([2.0 * offset[dims - 1 - c] / shape[dims - 1 - c]
                           for c in range(dims)])
    derivatives = torch.gradient(grid, dim=list(range(1, dims + 1)))  # d grid / d p_axis
    label_grid = grid + d_norm
    for axis, deriv in enumerate(derivatives):
        label_grid = label_grid - offset[axis] * deriv
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)
    label = F.grid_sample(label.float(), label_grid, mode="nearest", padding_mode="reflection",
                          align_corners=False).long()
    return image, label


def _augment_intensity(image: torch.Tensor, config: AugmentConfig,
                       g: torch.Generator) -> torch.Tensor:
    batch = image.shape[0]
    view = (batch,) + (1,) * (image.dim() - 1)
    p = config.intensity_prob

    def chosen() -> torch.Tensor:
        return (torch.rand(batch, generator=g) < p).view(view)

    if config.intensity_scale != (1.0, 1.0):
        factor = _uniform((batch,), *config.intensity_scale, g).view(view)
        image = torch.where(chosen(), image * factor, image)
    if config.gamma != (1.0, 1.0):
        gamma = _uniform((batch,), *config.gamma, g).view(view)
        flat = image.flatten(1)
        lo = flat.min(1).values.view(view)
        rng = (flat.max(1).values.view(view) - lo).clamp_min(1e-6)
        gammaed = ((image - lo) / rng).clamp(0, 1).pow(gamma) * rng + lo
        image = torch.where(chosen(), gammaed, image)
    if config.noise_std > 0:
        std = _uniform((batch,), 0.0, config.noise_std, g).view(view)
        noise = torch.randn(image.shape, generator=g) * std
        image = torch.where(chosen(), image + noise, image)
    return image
