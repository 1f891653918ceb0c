"""Dataset fingerprint and the training plan derived from it (every choice overridable).

The fingerprint summarises what the plan needs (shapes, spacings, modality, intensities, labels);
:func:`resolve_plan` turns it plus a :class:`TrainConfig` into a :class:`TrainingPlan`, the
fully resolved settings a run uses. Both are plain data, saved beside the checkpoints and in the
model card.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import ConfigError, DatasetError
from medseg.model_card import INSTANCE_CLASSES, ModelCard, NormalizationConfig
from medseg.networks.factory import NetworkConfig, plan_network
from medseg.training.config import INSTANCE_METHOD, TrainConfig
from medseg.training.dataset import RawCase

# Voxels per batch that keep one step around a second on a CPU / that fit a GPU comfortably.
CPU_BATCH_VOXELS = 400_000
GPU_BATCH_VOXELS_PER_GB = 1_000_000
MAX_PATCH_VOXELS = {2: 512 * 512, 3: 128 * 128 * 128}


@dataclass
class Fingerprint:
    """What the plan is derived from.

    Attributes:
        num_cases: Cases in the dataset.
        spatial_dims: 2 or 3.
        in_channels: Image channels.
        median_shape: Median spatial shape (voxels).
        max_shape: Largest spatial size per axis.
        median_spacing: Median spacing (mm).
        modality: Declared or configured modality.
        label_values: Class values found in the labels.
        foreground_percentiles: 0.5 / 50 / 99.5 intensity percentiles inside the labels.
        foreground_mean: Mean intensity inside the labels.
        foreground_std: Standard deviation inside the labels.
    """

    num_cases: int
    spatial_dims: int
    in_channels: int
    median_shape: list[int]
    max_shape: list[int]
    median_spacing: list[float]
    modality: str
    label_values: list[int]
    foreground_percentiles: list[float]
    foreground_mean: float
    foreground_std: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CaseSummary:
    """What the fingerprint needs of one case (a sample of its foreground intensities)."""

    ndim: int
    channels: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    label_values: set[int]
    foreground: np.ndarray


def summarise_case(case: RawCase, rng: np.random.Generator, *, instances: bool = False,
                   max_samples: int = 10000) -> CaseSummary:
    """One case's :class:`CaseSummary` (at most ``max_samples`` foreground voxels, drawn with
    ``rng``)."""
    lab = np.asarray(case.label.array[0])
    values = {int(min(v, 1)) if instances else int(v) for v in np.unique(lab)}
    fg = np.asarray(case.image.array[0], dtype=np.float64)[lab > 0]
    if fg.size > max_samples:
        fg = rng.choice(fg, max_samples, replace=False)
    return CaseSummary(case.image.meta.ndim, case.image.num_channels,
                       tuple(case.image.spatial_shape), tuple(case.image.meta.spacing), values,
                       fg)


def compute_fingerprint(cases: Sequence[RawCase], *, modality: str | None = None,
                        seed: int = 0, instances: bool = False) -> Fingerprint:
    """Summarise a list of validated cases (intensities sampled, at most 10k voxels per case).

    With ``instances`` the labels are instance ids: ``label_values`` says only whether
    background and objects occur (0, 1)."""
    rng = np.random.default_rng(seed)
    return combine_summaries([summarise_case(c, rng, instances=instances) for c in cases],
                             modality=modality)


def combine_summaries(summaries: Sequence[CaseSummary], *, modality: str | None = None
                      ) -> Fingerprint:
    """The :class:`Fingerprint` of the cases ``summaries`` describe."""
    if not summaries:
        raise DatasetError("cannot fingerprint an empty dataset")
    dims = {s.ndim for s in summaries}
    chans = {s.channels for s in summaries}
    if len(dims) != 1 or len(chans) != 1:
        raise DatasetError(f"cases mix dimensions {sorted(dims)} / channel counts {sorted(chans)}")
    shapes = np.array([s.shape for s in summaries])
    spacings = np.array([s.spacing for s in summaries])
    values: set[int] = set().union(*(s.label_values for s in summaries))
    fg_all = np.concatenate([s.foreground for s in summaries])
    if fg_all.size == 0:
        fg_all = np.zeros(1)
    return Fingerprint(
        num_cases=len(summaries),
        spatial_dims=dims.pop(),
        in_channels=chans.pop(),
        median_shape=[int(v) for v in np.median(shapes, axis=0)],
        max_shape=[int(v) for v in shapes.max(axis=0)],
        median_spacing=[float(v) for v in np.median(spacings, axis=0)],
        modality=(modality or "").upper(),
        label_values=sorted(values),
        foreground_percentiles=[float(v) for v in np.percentile(fg_all, [0.5, 50, 99.5])],
        foreground_mean=float(fg_all.mean()),
        foreground_std=float(fg_all.std()),
    )


@dataclass
class TrainingPlan:
    """The resolved settings of a run (config overrides applied to the fingerprint's plan)."""

    spatial_dims: int
    target_spacing: list[float] | None
    normalization: NormalizationConfig
    patch_size: list[int]
    batch_size: int
    label_names: dict[int, str]
    network: NetworkConfig
    modality: str
    context_slices: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["label_names"] = {str(k): v for k, v in self.label_names.items()}
        return d


def default_normalization(fp: Fingerprint) -> NormalizationConfig:
    """CT: clip to the foreground 0.5/99.5 percentiles, z-score with dataset statistics.
    Everything else (MR, microscopy, EM): per-image z-score."""
    if fp.modality == "CT":
        lo, _, hi = fp.foreground_percentiles
        return NormalizationConfig(scheme="ct", clip=(lo, hi), mean=fp.foreground_mean,
                                   std=max(fp.foreground_std, 1e-3))
    return NormalizationConfig(scheme="zscore")


def default_patch_size(shape: Sequence[int], divisor: int = 8, *, spatial_dims: int) -> list[int]:
    """The median shape rounded up to ``divisor`` (whole-image patches), shrunk to the cap."""
    patch = [max(divisor, int(math.ceil(s / divisor)) * divisor) for s in shape]
    while math.prod(patch) > MAX_PATCH_VOXELS[spatial_dims]:
        i = int(np.argmax(patch))
        patch[i] = max(divisor, patch[i] - divisor)
    return patch


def default_batch_size(patch: Sequence[int], *, device_type: str,
                       memory_gb: float | None = None) -> int:
    """Fill a voxel budget set by the device (compute on CPU, memory on GPU), from 2 to 32."""
    budget = CPU_BATCH_VOXELS if device_type == "cpu" else \
        GPU_BATCH_VOXELS_PER_GB * max(1.0, (memory_gb or 8.0) * 0.5)
    return int(min(32, max(2, budget // math.prod(patch))))


def resolve_plan(config: TrainConfig, fp: Fingerprint, *, label_names: dict[int, str] | None,
                 device_type: str, memory_gb: float | None = None) -> TrainingPlan:
    """Apply ``config``'s overrides to the plan derived from ``fp``."""
    dims = config.spatial_dims or fp.spatial_dims
    slicewise = dims == 2 and fp.spatial_dims == 3  # a 2D model trained on slices of volumes
    if dims != fp.spatial_dims and not slicewise:
        raise ConfigError(f"spatial_dims {dims} does not match the {fp.spatial_dims}D dataset")
    if config.context_slices and dims != 2:
        raise ConfigError("context_slices is for 2D models (spatial_dims: 2)")
    if slicewise:  # in-plane axes only; slices are used at their native pixels
        fp = dataclasses.replace(fp, median_shape=fp.median_shape[:2],
                                 max_shape=fp.max_shape[:2],
                                 median_spacing=fp.median_spacing[:2])
    names = config.data.label_names or label_names
    if config.data.instance_targets is not None:  # the classes the targets are made of
        names = dict(INSTANCE_CLASSES[INSTANCE_METHOD[config.data.instance_targets]])
    if not names:
        names = {v: ("background" if v == 0 else f"label_{v}")
                 for v in range(max(fp.label_values) + 1)}
    names = {int(k): str(v) for k, v in sorted(names.items())}
    if sorted(names) != list(range(len(names))):
        raise ConfigError(
            f"label names must cover classes 0..N-1 without gaps, got {sorted(names)}")
    outside = [v for v in fp.label_values if v not in names]
    if outside:
        raise DatasetError(f"labels hold values {outside} that have no label name ({names})")
    spacing = config.target_spacing or fp.median_spacing
    if len(spacing) != dims:
        raise ConfigError(f"target_spacing {spacing} must have {dims} entries")
    shape = [int(round(s * sp / t))
             for s, sp, t in zip(fp.median_shape, fp.median_spacing, spacing, strict=True)]
    if config.normalization in ("zscore", "percentile", "zscore-nonzero",
                                "percentile-nonzero"):
        scheme, _, nonzero = config.normalization.partition("-")
        norm = NormalizationConfig(scheme=scheme, nonzero=bool(nonzero))
    elif config.normalization == "ct":
        norm = default_normalization(dataclasses.replace(fp, modality="CT"))
    else:
        norm = default_normalization(fp)
    patch = list(config.patch_size) if config.patch_size else \
        default_patch_size(shape, 8 if dims == 3 else 16, spatial_dims=dims)
    if len(patch) != dims:
        raise ConfigError(f"patch_size {patch} must have {dims} entries")
    network = plan_network(
        spatial_dims=dims, in_channels=fp.in_channels * (2 * config.context_slices + 1),
        out_channels=len(names),
        patch_size=patch, spacing=spacing, base_filters=config.base_filters,
        max_filters=config.max_filters, deep_supervision=config.deep_supervision,
        max_levels=config.max_levels, upsample=config.upsample,
    )
    bad = [p for p, d in zip(patch, network.divisor, strict=True) if p % d]
    if bad:
        raise ConfigError(f"patch_size {patch} must be a multiple of {network.divisor}")
    batch = config.batch_size or default_batch_size(patch, device_type=device_type,
                                                    memory_gb=memory_gb)
    return TrainingPlan(
        spatial_dims=dims,
        target_spacing=None if slicewise else [float(s) for s in spacing],
        normalization=norm,
        patch_size=patch,
        batch_size=batch,
        label_names=names,
        network=network,
        modality=fp.modality,
        context_slices=config.context_slices,
    )


def plan_from_card(card: ModelCard, config: TrainConfig, fp: Fingerprint, *, device_type: str,
                   memory_gb: float | None = None) -> TrainingPlan:
    """The plan of a run that starts from a model (``config.init_from``): the card's network,
    normalisation, spacing, window and classes, so the weights load and inference keeps
    working as before; only ``patch_size`` and ``batch_size`` may be overridden.

    Raises:
        DatasetError: The data do not fit the card (dimensions, channels, label values).
    """
    dims = card.spatial_dims
    if fp.spatial_dims != dims and not (dims == 2 and fp.spatial_dims == 3):
        raise DatasetError(f"model {card.name!r} is {dims}D, the data are {fp.spatial_dims}D")
    if fp.in_channels != card.image_channels:
        raise DatasetError(f"model {card.name!r} takes {card.image_channels} channel(s), "
                           f"the images have {fp.in_channels} (set data.channels or "
                           "data.channel_rule)")
    names = {int(k): str(v) for k, v in sorted(card.label_names.items())}
    outside = [v for v in fp.label_values if v not in names]
    if outside and config.data.instance_targets is None:
        raise DatasetError(f"labels hold values {outside} that model {card.name!r} does not "
                           f"have ({names})")
    patch = list(config.patch_size) if config.patch_size else list(card.roi_size)
    bad = [p for p, d in zip(patch, card.network.divisor, strict=True) if p % d]
    if len(patch) != dims or bad:
        raise ConfigError(f"patch_size {patch} must be {dims} multiples of "
                          f"{card.network.divisor}")
    batch = config.batch_size or default_batch_size(patch, device_type=device_type,
                                                    memory_gb=memory_gb)
    return TrainingPlan(
        spatial_dims=dims,
        target_spacing=None if card.target_spacing is None or fp.spatial_dims != dims
        else [float(s) for s in card.target_spacing],
        normalization=card.normalization,
        patch_size=patch,
        batch_size=batch,
        label_names=names,
        network=card.network,
        modality=card.modality,
        context_slices=card.context_slices,
    )
