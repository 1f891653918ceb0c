"""Intensity normalisation driven by a model card's :class:`NormalizationConfig`."""

from __future__ import annotations

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
        elif config.scheme in ("ct", "scale"):
            mean, std = float(config.mean), float(config.std)  # type: ignore[arg-type]
        else:
            continue
        ch -= mean
        ch /= max(std, 1e-8)
    return out
