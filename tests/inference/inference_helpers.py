"""Helpers for inference tests: tiny random-weight models saved as model files, images on
oblique grids, and a deterministic "threshold" network whose correct output is known."""

from __future__ import annotations

import numpy as np
import torch

from medseg.io import ImageMeta, MedImage, Provenance
from medseg.model_card import ModelCard, NormalizationConfig
from medseg.networks import NetworkConfig, build_network, plan_network

LABELS = {0: "background", 1: "anterior", 2: "posterior"}


def tiny_card(*, name: str = "tiny", spatial_dims: int = 3, roi: list[int] | None = None,
              target_spacing: list[float] | None = None, in_channels: int = 1,
              out_channels: int = 3) -> tuple[ModelCard, torch.nn.Module]:
    """A small random-weight DynUNet and its card (seeded)."""
    roi = roi or [16] * spatial_dims
    torch.manual_seed(0)
    config = plan_network(spatial_dims=spatial_dims, in_channels=in_channels,
                          out_channels=out_channels, patch_size=roi, base_filters=4,
                          max_filters=16)
    card = ModelCard(name=name, network=config,
                     label_names={k: v for k, v in LABELS.items() if k < out_channels},
                     roi_size=roi, target_spacing=target_spacing,
                     normalization=NormalizationConfig(scheme="zscore"))
    return card, build_network(config)


class ThresholdNet(torch.nn.Module):
    """Logits ``(-x, x - 0.5)``: class 1 where the (unnormalised) input exceeds 0.5.

    Stands in for a trained network whose right answer is known, so geometry through
    padding, windows and resampling can be checked against the truth.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[:, :1] * 4, (x[:, :1] - 0.5) * 4], dim=1)


def threshold_card(*, roi: list[int], target_spacing: list[float] | None = None) -> ModelCard:
    config = NetworkConfig(spatial_dims=len(roi), in_channels=1, out_channels=2)
    return ModelCard(name="threshold", network=config, label_names={0: "bg", 1: "ball"},
                     roi_size=roi, target_spacing=target_spacing,
                     normalization=NormalizationConfig(scheme="none"))


def oblique_meta(shape_ndim: int = 3, *, spacing: tuple[float, ...] = (0.9, 1.1, 1.7),
                 path: str = "synthetic.nii.gz") -> ImageMeta:
    """A rotated grid with anisotropic spacing, so axis mix-ups change the answer."""
    if shape_ndim == 2:
        c, s = np.cos(0.3), np.sin(0.3)
        direction = ((c, -s), (s, c))
        return ImageMeta(spacing=spacing[:2], origin=(-12.5, 40.25), direction=direction,
                         provenance=Provenance(path=path, format="nifti"))
    a = 0.25
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return ImageMeta(spacing=spacing, origin=(-20.0, 31.5, 7.25),
                     direction=tuple(tuple(float(v) for v in r) for r in rot),
                     provenance=Provenance(path=path, format="nifti"))


def ball_image(shape: tuple[int, ...], meta: ImageMeta, *, radius_mm: float = 9.0
               ) -> tuple[MedImage, np.ndarray]:
    """A ball of physical radius ``radius_mm`` (value 1 inside, 0 outside) and its mask."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = meta.index_to_world(idx.reshape(-1, len(shape))).reshape(*shape, len(shape))
    centre = meta.index_to_world(np.array([[(n - 1) / 2 + 0.3 for n in shape]]))[0]
    mask = np.linalg.norm(world - centre, axis=-1) <= radius_mm
    return MedImage(mask.astype(np.float32)[None], meta), mask.astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)
