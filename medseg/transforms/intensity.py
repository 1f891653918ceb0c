"""Intensity normalisation driven by a model card's :class:`NormalizationConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medseg.model_card import NormalizationConfig


def normalize_intensity(array: np.ndarray, config: NormalizationConfig) -> np.ndarray:
    """Normalise a channel-first image ``(C, *spatial)`` to float32, per channel.

    Examples:
        >>> from medseg.model_card import NormalizationConfig
        >>> x = np.arange(8, dtype=np.float32).reshape(1, 2, 4)
        >>> y = normalize_intensity(x, NormalizationConfig(scheme="zscore"))
        >>> round(float(y.mean()), 6), round(float(y.std()), 6)
        (0.0, 1.0)
    """
    out = np.array(array, dtype=np.float32, copy=True)  # one copy, whatever the input dtype
    for c in range(out.shape[0]):
        ch = out[c]
        if config.clip is not None:
            np.clip(ch, config.clip[0], config.clip[1], out=ch)
        if config.scheme == "zscore":
            sel = ch[ch != 0] if config.nonzero else ch
            if sel.size == 0:
                sel = ch
            mean, std = float(sel.mean(dtype=np.float64)), float(sel.std(dtype=np.float64))
        elif config.scheme == "percentile":
            mean, high = percentile_range(ch, config)
            std = high - mean
        elif config.scheme in ("ct", "scale"):
            mean, std = float(config.mean), float(config.std)  # type: ignore[arg-type]
        else:
            continue
        ch -= mean
        ch /= max(std, 1e-8)
    return out


#: Percentiles of larger images are taken from a regular subsample of about this many voxels.
_PERCENTILE_SAMPLE = 4_000_000


def percentile_range(channel: np.ndarray, config: NormalizationConfig) -> tuple[float, float]:
    """The ``config.percentiles`` of one channel (non-zero voxels only with ``nonzero``).

    A channel of more than ``_PERCENTILE_SAMPLE`` voxels is subsampled with a fixed stride, so
    the result is deterministic and the same in training and inference. 8- and 16-bit integer
    channels (most DICOM, NIfTI and microscopy data) take their percentiles from a histogram
    (:func:`_integer_percentiles`: the same values, a tenth of the time).
    """
    flat = np.asarray(channel).reshape(-1)
    step = max(1, flat.size // _PERCENTILE_SAMPLE)
    sample = flat[::step]
    if sample.dtype.kind not in "ui" or sample.dtype.itemsize > 2:
        sample = sample.astype(np.float32)
    if config.nonzero and np.any(sample != 0):
        sample = sample[sample != 0]
    if sample.dtype.kind in "ui":
        low, high = _integer_percentiles(sample, config.percentiles)
    else:
        low, high = np.percentile(sample, config.percentiles)
    return float(low), float(max(high, low + 1e-6))


def _integer_percentiles(values: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """``np.percentile(values.astype(np.float32), percentiles)`` of a non-empty 8- or 16-bit
    integer array, bit for bit, from its histogram: the two order statistics each percentile
    falls between are looked up in the cumulative counts and interpolated as NumPy's
    ``linear`` method does (the same float32 / float64 steps).

    Examples:
        >>> v = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint8)
        >>> bool(np.array_equal(_integer_percentiles(v, [1.0, 99.8]),
        ...                     np.percentile(v.astype(np.float32), [1.0, 99.8])))
        True
    """
    offset = int(values.min()) if values.dtype.kind == "i" else 0
    cumulative = np.cumsum(np.bincount(values.astype(np.int64) - offset if offset else values))
    n = int(cumulative[-1])
    virtual = (n - 1) * np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    below = np.floor(virtual).astype(np.intp)
    above = np.minimum(below + 1, n - 1)
    a = (np.searchsorted(cumulative, below, side="right") + offset).astype(np.float32)
    b = (np.searchsorted(cumulative, above, side="right") + offset).astype(np.float32)
    t = virtual - below
    diff = np.subtract(b, a)
    out = np.asanyarray(np.add(a, diff * t))
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5, casting="unsafe",
                dtype=type(out.dtype))
    return out
