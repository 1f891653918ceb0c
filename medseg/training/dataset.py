"""Load, check and preprocess every case once, so training does no per-iteration file I/O.

The datasets medseg trains on fit in memory after preprocessing (MSD Hippocampus: ~50 MB as
float32), so cases are read, validated, resampled to the target spacing and normalised once,
then kept as tensors. :class:`PreparedCase` also keeps the voxel positions of each class for
foreground-aware patch sampling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from medseg.errors import DatasetError, MedsegError
from medseg.io.image import MedImage
from medseg.model_card import NormalizationConfig
from medseg.training.reading import read_case_image, read_case_label
from medseg.training.sources import CasePair
from medseg.transforms import normalize_intensity, resample_to_spacing
from medseg.transforms.context import with_neighbour_slices

logger = logging.getLogger(__name__)

MAX_CLASS_LOCATIONS = 20000  # per class and case: plenty for sampling, small in memory


@dataclass
class RawCase:
    """A validated case as read from disk (original spacing and intensities)."""

    case_id: str
    image: MedImage
    label: MedImage


@dataclass
class PreparedCase:
    """A case ready for training: normalised float32 image and integer label as tensors.

    Attributes:
        case_id: Case identifier.
        image: ``(C, *spatial)`` float32, normalised, at the target spacing.
        label: ``(1, *spatial)`` uint8 class indices.
        class_locations: ``{class: (N, ndim) int64}`` voxel indices (subsampled) per class.
    """

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    class_locations: dict[int, torch.Tensor] = field(default_factory=dict)


def load_raw_case(
    pair: CasePair, *, label_values: dict[int, int] | None = None, num_classes: int | None = None,
    channels: Sequence[int] | None = None, channel_rule: str | None = None,
) -> RawCase:
    """Read one pair and check that image and label agree (``channel_rule``: make one channel
    by this rule, :mod:`medseg.transforms.channels`; ``channels``: keep only these).

    Raises:
        DatasetError: shape or geometry mismatch, non-integer labels, or label values outside
            ``0..num_classes-1`` (after ``label_values`` mapping); the message names the case.
    """
    where = f"case {pair.case_id}"
    if pair.channels is not None:
        channels = pair.channels
    if pair.label_values is not None:
        label_values = dict(pair.label_values)
    if pair.image_slices:
        from medseg.io.image2d import read_slice_stack

        try:
            image = read_slice_stack(pair.image_slices)
            label = read_slice_stack(pair.label_slices)
        except MedsegError as exc:
            raise DatasetError(f"{where}: {exc}") from exc
    else:
        image = read_case_image(pair.image, case_id=pair.case_id)
        label = read_case_label(pair.label, image, is_seg=pair.label_is_seg,
                                case_id=pair.case_id)
    if channel_rule is not None:
        from medseg.transforms.channels import apply_channel_rule

        try:
            image = image.with_array(apply_channel_rule(image.array, channel_rule))
        except MedsegError as exc:
            raise DatasetError(f"{where}: {pair.image}: {exc}") from exc
    elif channels:
        if max(channels) >= image.num_channels:
            raise DatasetError(f"{where}: data.channels {list(channels)} but {pair.image} has "
                               f"{image.num_channels} channel(s)")
        image = image.with_array(np.ascontiguousarray(image.array[list(channels)]))
    if label.num_channels != 1:
        raise DatasetError(f"{where}: label {pair.label} has {label.num_channels} channels, "
                           "expected one label map")
    if label.spatial_shape != image.spatial_shape:
        raise DatasetError(f"{where}: label shape {label.spatial_shape} differs from image "
                           f"shape {image.spatial_shape} ({pair.label} vs {pair.image})")
    if not image.meta.same_grid(label.meta):
        raise DatasetError(
            f"{where}: label and image grids differ (spacing {label.meta.spacing} vs "
            f"{image.meta.spacing}, origin {label.meta.origin} vs {image.meta.origin}); "
            "resample the label onto the image first"
        )
    values = np.asarray(label.array)
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
        raise DatasetError(f"{where}: label {pair.label} holds non-integer values")
    values = values.astype(np.int64)
    if label_values is not None:
        present = np.unique(values)
        unknown = sorted(int(v) for v in present if int(v) not in label_values)
        if unknown:
            raise DatasetError(f"{where}: label values {unknown} are not in label_values "
                               f"{sorted(label_values)}")
        lut = np.zeros(int(present.max()) + 1, dtype=np.int64)
        for raw, cls in label_values.items():
            if 0 <= raw < lut.size:
                lut[raw] = cls
        values = lut[values]
    if values.min() < 0 or (num_classes is not None and values.max() >= num_classes):
        bad = sorted({int(v) for v in np.unique(values) if v < 0 or
                      (num_classes is not None and v >= num_classes)})
        raise DatasetError(f"{where}: label values {bad} are outside the declared classes "
                           f"0..{(num_classes or 1) - 1}")
    dtype = np.uint8 if values.max() < 256 else np.uint16
    return RawCase(pair.case_id, image, label.with_array(values.astype(dtype)))


def load_raw_cases(
    pairs: Sequence[CasePair],
    *,
    label_values: dict[int, int] | None = None,
    num_classes: int | None = None,
    channels: Sequence[int] | None = None,
    channel_rule: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[RawCase]:
    """:func:`load_raw_case` for every pair, with an optional ``progress(done, total)``."""
    cases = []
    for i, pair in enumerate(pairs):
        cases.append(load_raw_case(pair, label_values=label_values, num_classes=num_classes,
                                   channels=channels, channel_rule=channel_rule))
        if progress is not None:
            progress(i + 1, len(pairs))
    return cases


def prepare_case(
    case: RawCase,
    *,
    normalization: NormalizationConfig,
    target_spacing: Sequence[float] | None,
    num_classes: int,
    seed: int = 0,
    instances: bool = False,
    fov_pixels: Sequence[int] | None = None,
    context_slices: int = 0,
) -> PreparedCase:
    """Resample to ``target_spacing`` (labels nearest-neighbour) and normalise intensities.

    With ``instances`` the label holds instance ids (kept as they are, int32): foreground
    sampling locations are those of any object (class 1). With ``fov_pixels`` (a 2D model's
    field of view) the slices of a volume are resampled in-plane to it after normalisation, as
    the inference engine does (bilinear, antialiased when shrinking; labels nearest). With
    ``context_slices`` (a 2.5D model) each slice's neighbours become extra channels, as the
    engine feeds them (:func:`medseg.transforms.context.with_neighbour_slices`)."""
    image, label = case.image, case.label
    if target_spacing is not None:
        image = resample_to_spacing(image, target_spacing, order=3)
        label = resample_to_spacing(label, target_spacing, order=0)
    array = normalize_intensity(image.array, normalization)
    lab = np.asarray(label.array)
    if fov_pixels is not None and array.ndim == len(fov_pixels) + 2 \
            and tuple(array.shape[1:3]) != tuple(fov_pixels):
        array, lab = _slices_to_fov(array, lab, tuple(int(n) for n in fov_pixels))
    array = with_neighbour_slices(array, context_slices)
    rng = np.random.default_rng(seed)
    locations = {}
    for c in range(1, 2 if instances else num_classes):
        idx = np.argwhere(lab[0] > 0 if instances else lab[0] == c)
        if len(idx) > MAX_CLASS_LOCATIONS:
            idx = idx[rng.choice(len(idx), MAX_CLASS_LOCATIONS, replace=False)]
        if len(idx):
            locations[c] = torch.from_numpy(idx.astype(np.int64))
    return PreparedCase(
        case.case_id,
        torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(lab.astype(np.int32) if instances else lab)),
        locations,
    )


def _slices_to_fov(image: np.ndarray, label: np.ndarray, fov: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Every slice (last axis) of ``(C, H, W, D)`` arrays resampled in-plane to ``fov``."""
    import torch.nn.functional as F

    shrink = fov[0] < image.shape[1] or fov[1] < image.shape[2]
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(3, 0, 1, 2), dtype=np.float32))
    x = F.interpolate(x, size=fov, mode="bilinear", align_corners=False, antialias=shrink)
    y = torch.from_numpy(np.ascontiguousarray(label.transpose(3, 0, 1, 2).astype(np.float32)))
    y = F.interpolate(y, size=fov, mode="nearest-exact")
    return (x.permute(1, 2, 3, 0).numpy(),
            y.permute(1, 2, 3, 0).numpy().round().astype(label.dtype))
