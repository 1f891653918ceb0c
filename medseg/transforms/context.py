"""Neighbouring slices as extra channels: the input of a 2.5D model.

A 2D model that sees each slice together with its ``k`` neighbours on either side (a
"2.5D" model) tells a lesion that runs through several slices from a bright spot on one. The
neighbours become channels: a ``(C, H, W, D)`` volume turns into ``(C * (2k + 1), H, W, D)``,
channel ``(o + k) * C + c`` of slice ``z`` holding channel ``c`` of slice ``z + o`` for
``o = -k .. k``. Past either end of the volume the end slice stands in for the missing ones,
and a lone 2D image ``(C, H, W)`` is its own neighbour on both sides. Training
(:func:`medseg.training.dataset.prepare_case`) and inference
(:class:`medseg.inference.engine.Segmenter`) call this one function, so both see the same
channels.
"""

from __future__ import annotations

import numpy as np


def with_neighbour_slices(array: np.ndarray, k: int) -> np.ndarray:
    """``array`` (``(C, H, W, D)`` or a 2D ``(C, H, W)``) with the ``k`` slices on either side
    of each slice (last axis) as extra channels; ``k = 0`` returns ``array`` itself.

    Examples:
        >>> v = np.arange(3, dtype=np.float32).reshape(1, 1, 1, 3)   # slices 0, 1, 2
        >>> with_neighbour_slices(v, 1)[:, 0, 0, :].tolist()          # rows: z-1, z, z+1
        [[0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 2.0]]
    """
    if k < 0:
        raise ValueError(f"context slices must be >= 0, got {k}")
    if k == 0:
        return array
    if array.ndim == 3:  # a 2D image: every neighbour is the image itself
        return np.concatenate([array] * (2 * k + 1), axis=0)
    if array.ndim != 4:
        raise ValueError(f"expected (C, H, W, D) or (C, H, W), got shape {array.shape}")
    near = neighbour_slices(0, array.shape[-1], array.shape[-1], k)
    return np.concatenate([np.take(array, near[:, j], axis=-1) for j in range(2 * k + 1)],
                          axis=0)


def neighbour_slices(start: int, stop: int, depth: int, k: int) -> np.ndarray:
    """``(stop - start, 2k + 1)`` slice indices: row ``i`` holds slices ``start + i - k`` to
    ``start + i + k`` of a ``depth``-slice volume, the end slice standing in past either end.

    Examples:
        >>> neighbour_slices(0, 3, 3, 1).tolist()
        [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    """
    return np.clip(np.arange(start, stop)[:, None] + np.arange(-k, k + 1), 0, depth - 1)
