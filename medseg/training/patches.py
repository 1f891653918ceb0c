"""Foreground-aware patch sampling with mirror (reflection) padding.

As in the U-Net overlap-tile strategy, wherever a patch reaches past the image border the
missing context is the image reflected at that border. Patches larger than the image (whole-
volume training on small crops such as MSD Hippocampus) get a random offset and are filled by
reflection on every side. Hand-written because MONAI's crop transforms pad with a constant or
need per-sample dict pipelines; here one index gather per axis does crop and reflection at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medseg.distributed.ddp import normalised_weights
from medseg.training.config import CASE_SAMPLING
from medseg.training.dataset import PreparedCase


def reflect_indices(start: int, size: int, length: int) -> torch.Tensor:
    """Indices ``start .. start+size-1`` folded back into ``0 .. length-1`` by reflection.

    Reflection excludes the edge voxel (like ``numpy.pad(mode="reflect")``) and repeats as
    often as needed, so any offset is valid.

    Examples:
        >>> reflect_indices(-2, 7, 3).tolist()
        [2, 1, 0, 1, 2, 1, 0]
    """
    idx = torch.arange(start, start + size)
    if length == 1:
        return torch.zeros_like(idx)
    period = 2 * (length - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= length, period - idx, idx)


def crop_reflect(array: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Crop ``(C, *spatial)`` at ``start`` with ``size``, reflecting outside the array."""
    out = array
    for axis, (s, n) in enumerate(zip(start, size, strict=True)):
        out = out.index_select(axis + 1, reflect_indices(int(s), int(n), array.shape[axis + 1]))
    return out


def case_weights(cases: Sequence[PreparedCase], mode: str) -> np.ndarray | None:
    """Probabilities of drawing each case (summing to 1), or ``None`` for uniform draws.

    With ``"area"`` a case's weight is its number of pixels (voxels): an image of 12 times the
    area of another is drawn 12 times as often, so large images, which hold more of the
    objects, are not under-represented next to many small ones.

    Examples:
        >>> from types import SimpleNamespace
        >>> cases = [SimpleNamespace(image=torch.zeros(1, 256, 256)),
        ...          SimpleNamespace(image=torch.zeros(1, 512, 768))]
        >>> case_weights(cases, "area").round(3).tolist()
        [0.143, 0.857]
        >>> case_weights(cases, "uniform") is None
        True
    """
    if mode not in CASE_SAMPLING:
        raise ValueError(f"case sampling must be one of {CASE_SAMPLING}, got {mode!r}")
    if mode == "uniform":
        return None
    area = [float(np.prod(c.image.shape[1:])) for c in cases]
    return normalised_weights(area, len(area))


class PatchSampler:
    """Draw training batches of patches from prepared cases.

    Args:
        cases: Training cases (tensors in memory).
        patch_size: Spatial patch size.
        foreground_prob: Probability that a patch is centred on a voxel of a random class
            present in the case (class balance for small structures).
        generator: The run's random generator (all sampling randomness comes from it, so a
            resumed run continues the same sequence).
        weights: Relative weight of each case in :meth:`next_batch` (see
            :func:`case_weights`); ``None`` draws cases uniformly.
    """

    def __init__(self, cases: Sequence[PreparedCase], patch_size: Sequence[int], *,
                 foreground_prob: float, generator: torch.Generator,
                 weights: np.ndarray | None = None) -> None:
        self.cases = list(cases)
        self.patch_size = [int(p) for p in patch_size]
        self.foreground_prob = float(foreground_prob)
        self.generator = generator
        self.weights = (None if weights is None
                        else torch.as_tensor(normalised_weights(weights, len(self.cases))))

    def _randint(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]`` (inclusive)."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator))

    def case_patch_size(self, case: PreparedCase) -> list[int]:
        """The patch size in ``case``'s axes: a 2D patch in a volume is one slice thick (a 2D
        model trained on the slices of volumes; the slice axis is the last)."""
        extra = case.image.dim() - 1 - len(self.patch_size)
        return self.patch_size + [1] * extra

    def patch_start(self, case: PreparedCase) -> list[int]:
        """Start corner of a patch in ``case`` (may be negative: reflection fills the rest)."""
        shape = case.image.shape[1:]
        size = self.case_patch_size(case)
        # Valid starts keep the patch inside the image, or the image inside the patch.
        lows = [min(0, s - p) for s, p in zip(shape, size, strict=True)]
        highs = [max(0, s - p) for s, p in zip(shape, size, strict=True)]
        classes = sorted(case.class_locations)
        if classes and float(torch.rand(1, generator=self.generator)) < self.foreground_prob:
            c = classes[self._randint(0, len(classes) - 1)]
            locs = case.class_locations[c]
            centre = locs[self._randint(0, len(locs) - 1)].tolist()
            return [min(max(v - p // 2, lo), hi)
                    for v, p, lo, hi in zip(centre, size, lows, highs, strict=True)]
        return [self._randint(lo, hi) for lo, hi in zip(lows, highs, strict=True)]

    def sample(self, case_indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``(image (B, C, *patch) float32, label (B, 1, *patch) int64)``."""
        images, labels = [], []
        for i in case_indices:
            case = self.cases[i]
            start, size = self.patch_start(case), self.case_patch_size(case)
            # reshape drops the (size 1) slice axis of a slice taken from a volume
            images.append(crop_reflect(case.image, start, size).reshape(
                case.image.shape[0], *self.patch_size))
            labels.append(crop_reflect(case.label, start, size).reshape(1, *self.patch_size))
        return torch.stack(images), torch.stack(labels).long()

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of random cases (with replacement; weighted when the sampler has weights)."""
        if self.weights is not None:
            idx = torch.multinomial(self.weights, batch_size, replacement=True,
                                    generator=self.generator)
        else:
            idx = torch.randint(0, len(self.cases), (batch_size,), generator=self.generator)
        return self.sample(idx.tolist())
