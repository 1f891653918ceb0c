"""Model-card preprocessing applied window by window, so a large volume is never copied as float.

:func:`medseg.transforms.normalize_intensity` normalises a whole array; a per-image z-score needs
statistics of the whole image, but applying them is voxel-wise. :func:`window_normalizer`
computes the statistics once (in chunks, float64, the same definition as
``normalize_intensity``) and returns a function that normalises any window with them by calling
``normalize_intensity`` with fixed statistics (scheme ``"scale"``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medseg.io.image import MedImage
from medseg.model_card import ModelCard, NormalizationConfig
from medseg.transforms import normalize_intensity
from medseg.transforms.channels import apply_channel_rule
from medseg.transforms.intensity import percentile_range

#: Voxels per chunk when computing statistics (bounds the float64 temporaries to ~64 MB).
_CHUNK_VOXELS = 8_000_000


def _chunks(channel: np.ndarray) -> list[np.ndarray]:
    """Views of ``channel`` split along its last axis, about ``_CHUNK_VOXELS`` each."""
    per_slice = max(1, channel.size // max(channel.shape[-1], 1))
    step = max(1, _CHUNK_VOXELS // per_slice)
    return [channel[..., i:i + step] for i in range(0, channel.shape[-1], step)]


def _prepared(chunk: np.ndarray, config: NormalizationConfig) -> np.ndarray:
    values = chunk.astype(np.float32)
    if config.clip is not None:
        np.clip(values, config.clip[0], config.clip[1], out=values)
    if config.nonzero:
        selected = values[values != 0]
        return selected
    return values.ravel()


def channel_statistics(channel: np.ndarray, config: NormalizationConfig) -> tuple[float, float]:
    """Mean and standard deviation that ``normalize_intensity`` would use for a z-score.

    Two passes over float32-cast (and clipped) chunks with float64 sums, so the values agree
    with ``normalize_intensity`` on the whole array to float rounding; falls back to all voxels
    when ``nonzero`` selects none, as ``normalize_intensity`` does.
    """
    cfg = config
    n, total = 0, 0.0
    for chunk in _chunks(channel):
        v = _prepared(chunk, cfg)
        n += v.size
        total += float(v.sum(dtype=np.float64))
    if n == 0 and cfg.nonzero:
        cfg = NormalizationConfig(scheme=cfg.scheme, clip=cfg.clip, nonzero=False)
        return channel_statistics(channel, cfg)
    mean = total / max(n, 1)
    sq = 0.0
    for chunk in _chunks(channel):
        v = _prepared(chunk, cfg).astype(np.float64)
        v -= mean
        sq += float(np.dot(v, v))
    return mean, float(np.sqrt(sq / max(n, 1)))


def fixed_normalizations(array: np.ndarray, config: NormalizationConfig
                         ) -> list[NormalizationConfig]:
    """One statistics-free normalisation per channel of ``array`` (``(C, *spatial)``).

    A z-score becomes ``"scale"`` with that channel's statistics; other schemes already use
    fixed values and are returned unchanged.
    """
    if config.scheme not in ("zscore", "percentile"):
        return [config] * array.shape[0]
    out = []
    for c in range(array.shape[0]):
        if config.scheme == "percentile":
            low, high = percentile_range(array[c], config)
            mean, std = low, high - low
        else:
            mean, std = channel_statistics(array[c], config)
        out.append(NormalizationConfig(scheme="scale", clip=config.clip, mean=mean,
                                       std=max(std, 1e-8)))
    return out


def window_normalizer(array: np.ndarray, config: NormalizationConfig
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """A function normalising any ``(C, *roi)`` window of ``array`` exactly as the whole image.

    Examples:
        >>> x = np.random.default_rng(0).normal(5, 2, (1, 8, 8, 8)).astype(np.float32)
        >>> f = window_normalizer(x, NormalizationConfig(scheme="zscore"))
        >>> whole = normalize_intensity(x, NormalizationConfig(scheme="zscore"))
        >>> bool(np.allclose(f(x[:, :4]), whole[:, :4], atol=1e-5))
        True
    """
    per_channel = fixed_normalizations(array, config)
    if len(per_channel) == 1:
        return lambda window: normalize_intensity(window, per_channel[0])

    def normalise(window: np.ndarray) -> np.ndarray:
        return np.concatenate([normalize_intensity(window[c:c + 1], cfg)
                               for c, cfg in enumerate(per_channel)])

    return normalise


def apply_card_channel_rule(image: MedImage, card: ModelCard) -> MedImage:
    """``image`` with the card's channel rule applied (one channel), as in training; the image
    unchanged when the card has none (see :mod:`medseg.transforms.channels`)."""
    if card.channel_rule is None:
        return image
    return image.with_array(apply_channel_rule(image.array, card.channel_rule))
