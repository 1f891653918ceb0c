"""Class probabilities on a model's grid -> labels (and probabilities) on the source grid.

A model that runs at its own spacing leaves K probability maps on a coarse grid; the user needs
the label map on the source grid. The reference way (``resample_onto`` each class linearly onto
the full grid, keep a running argmax) costs K full-resolution float32 volumes of SimpleITK work,
for a label map that only changes class in a thin band around each boundary.

This module gets the same labels in about one pass over the output:

* **Where the labels agree, linear interpolation cannot change them.** A source voxel's
  linearly interpolated probabilities are a convex combination of the 2^d coarse voxels around
  it (its *cell*). If every corner has the same winning class ``c``, then
  ``p_c >= p_j`` at every corner, and so after any non-negative weighting too: the label is
  ``c``. Such voxels take their cell's label by a block copy (``np.take`` along each axis).
* **Only voxels in a mixed cell are interpolated**, exactly as SimpleITK's linear
  interpolator does (edge-clamped corners, 0 outside ``[-0.5, n - 0.5)``), with a running
  argmax in float32: the same labels as the reference, up to floating-point ties.
* **Slabs.** The output is produced in slabs along its slowest memory axis, so no
  full-resolution float volume per class is ever held; probabilities, when asked for, are
  interpolated separably (the same trilinear value) slab by slab straight into float16.

The index map between the grids must be axis-aligned (diagonal), which is always the case for
a model grid made by ``resample_to_spacing`` (same origin and direction, other spacing), even
when the source itself is oblique. For any other pair of grids :func:`argmax_onto` returns
``None`` and the caller keeps the SimpleITK path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product

import numpy as np

from medseg.io.image import ImageMeta

#: Output voxels per slab (bounds the temporaries to a few tens of MB per thread).
SLAB_VOXELS = 1 << 22
#: Threads working on slabs at once.
MAX_THREADS = 4


@dataclass(frozen=True)
class _Axis:
    """Where the source voxels along one axis fall in the model grid."""

    i0: np.ndarray  #: lower corner (edge-clamped), int64
    i1: np.ndarray  #: upper corner (edge-clamped), int64
    w: np.ndarray  #: weight of the upper corner, float32
    inside: np.ndarray  #: within ``[-0.5, n - 0.5)`` of the model grid (else the fill, 0)


def axis_aligned_index_map(src: ImageMeta, dst: ImageMeta, *, tol: float = 1e-6
                           ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scale, offset)`` with ``src_index = scale * dst_index + offset`` per axis, or ``None``
    when the map from ``dst`` voxel indices to ``src`` continuous indices mixes axes."""
    to_src = np.linalg.inv(src.direction_matrix * np.asarray(src.spacing)[None, :])
    a = to_src @ (dst.direction_matrix * np.asarray(dst.spacing)[None, :])
    b = to_src @ (np.asarray(dst.origin, dtype=np.float64) - np.asarray(src.origin))
    off = a - np.diag(np.diag(a))
    if np.abs(off).max(initial=0.0) > tol * max(1.0, float(np.abs(np.diag(a)).max())):
        return None
    return np.diag(a).copy(), b


def _axes(scale: np.ndarray, offset: np.ndarray, src_shape: tuple[int, ...],
          dst_shape: tuple[int, ...]) -> list[_Axis]:
    axes = []
    for s, o, n, m in zip(scale, offset, src_shape, dst_shape, strict=True):
        x = s * np.arange(m, dtype=np.float64) + o
        f = np.floor(x)
        axes.append(_Axis(i0=np.clip(f, 0, n - 1).astype(np.int64),
                          i1=np.clip(f + 1, 0, n - 1).astype(np.int64),
                          w=(x - f).astype(np.float32),
                          inside=(x >= -0.5) & (x < n - 0.5)))
    return axes


def _frame(order: str, nd: int) -> tuple[int, ...]:
    """Axis permutation that makes an array of memory ``order`` C-ordered (slowest first)."""
    return tuple(range(nd)) if order == "C" else tuple(reversed(range(nd)))


def slabs(n: int, row_voxels: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` whose rows of ``row_voxels`` voxels make about
    :data:`SLAB_VOXELS` each (at least one row)."""
    step = max(1, SLAB_VOXELS // max(row_voxels, 1))
    for a in range(0, n, step):
        yield slice(a, min(n, a + step))


def _lerp(a: np.ndarray, i0: np.ndarray, i1: np.ndarray, w: np.ndarray, axis: int
          ) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` between the corners ``i0`` and ``i1`` with
    the upper corner's weight ``w`` (float32 for any input dtype)."""
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def _take_rest(a: np.ndarray, index: list[np.ndarray]) -> np.ndarray:
    """``a`` gathered along every axis but the first with ``index[d]`` (last axis first, so the
    larger copies run over whole contiguous rows)."""
    for d in range(a.ndim - 1, 0, -1):
        a = np.take(a, index[d], axis=d)
    return a


def _outside(axes_f: list[_Axis], rows: slice) -> np.ndarray | None:
    """Boolean mask (broadcastable to the slab) of voxels outside the model grid, or None."""
    masks = [axes_f[0].inside[rows]] + [ax.inside for ax in axes_f[1:]]
    if all(m.all() for m in masks):
        return None
    nd = len(masks)
    inside = np.ones((1,) * nd, dtype=bool)
    for d, m in enumerate(masks):
        inside = inside & m.reshape([-1 if e == d else 1 for e in range(nd)])
    return ~inside


def _plan(probabilities: np.ndarray, src: ImageMeta, dst: ImageMeta,
          dst_shape: tuple[int, ...], order: str
          ) -> tuple[int, int, tuple[int, ...], list[_Axis]] | None:
    """Classes, dimensions, frame permutation and per-axis corners (in frame order), or
    ``None`` when the grids are not axis-aligned to each other."""
    index_map = axis_aligned_index_map(src, dst)
    if index_map is None:
        return None
    src_shape = tuple(probabilities.shape[1:])
    perm = _frame(order, len(src_shape))
    axes = _axes(*index_map, src_shape, dst_shape)
    return probabilities.shape[0], len(src_shape), perm, [axes[d] for d in perm]


def argmax_onto(probabilities: np.ndarray, src: ImageMeta, dst: ImageMeta,
                dst_shape: tuple[int, ...], *, order: str = "C") -> np.ndarray | None:
    """Labels on ``dst`` equal to the argmax of the linearly resampled ``probabilities``.

    Args:
        probabilities: ``(K, *src_shape)`` class probabilities on the ``src`` grid (a single
            channel is a sigmoid output: label 1 where ``p >= 0.5``).
        src: Geometry of the probabilities' grid (the model grid).
        dst: Geometry of the output grid (the source image's).
        dst_shape: Spatial shape of the output grid.
        order: Memory order of the returned labels (``"F"`` for a NIfTI-ordered source).

    Returns:
        uint8 labels (uint16 above 256 classes) of shape ``dst_shape``, or ``None`` when the
        grids are not axis-aligned to each other (resample with SimpleITK instead).
    """
    plan = _plan(probabilities, src, dst, dst_shape, order)
    if plan is None:
        return None
    k, nd, perm, axes_f = plan
    coarse = _coarse_labels(probabilities).transpose(perm)
    uniform = _uniform_cells(coarse)
    # every voxel's label as its cell's (lower corner's) label; exact where the cell is uniform
    cell = [ax.i0 for ax in axes_f]
    labels_coarse_rest = _take_rest(coarse, cell)
    uniform_rest = _take_rest(uniform, cell)
    dtype = np.uint8 if k <= 256 else np.uint16
    labels = np.empty(dst_shape, dtype=dtype, order=order)
    labels_f = labels.transpose(perm)
    # the probabilities in the frame's axis order, float32, one array for all classes
    frame_probabilities = np.ascontiguousarray(
        probabilities.transpose(0, *(d + 1 for d in perm)), dtype=np.float32)
    row_voxels = int(np.prod(labels_f.shape[1:]))

    def slab(rows: slice) -> None:
        out = np.take(labels_coarse_rest, axes_f[0].i0[rows], axis=0)
        mixed = np.nonzero(~np.take(uniform_rest, axes_f[0].i0[rows], axis=0))
        if mixed[0].size:
            out[mixed] = _interpolated_argmax(frame_probabilities, axes_f, rows, mixed)
        outside = _outside(axes_f, rows)
        if outside is not None:
            out[np.broadcast_to(outside, out.shape)] = 0
        labels_f[rows] = out

    # slabs are independent and NumPy releases the GIL in their large operations: the
    # cores the network used are idle here
    workers = min(os.cpu_count() or 1, MAX_THREADS)
    parts = list(slabs(labels_f.shape[0], row_voxels))
    if workers > 1 and len(parts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(slab, parts))
    else:
        for rows in parts:
            slab(rows)
    return labels


def _running_argmax(value: Callable[[int], np.ndarray], k: int) -> np.ndarray:
    """Labels from ``value(c)`` (float32, one class at a time) of ``k`` classes: the argmax,
    the first class winning ties (strict ``>``, as the reference), or ``value(0) >= 0.5`` for
    a single sigmoid output. One class's values are alive at a time."""
    if k == 1:
        return (value(0) >= 0.5).astype(np.uint8)
    best = value(0)
    labels = np.zeros(best.shape, dtype=np.uint8 if k <= 256 else np.uint16)
    for c in range(1, k):
        p = value(c)
        labels[p > best] = c
        np.maximum(best, p, out=best)
    return labels


def _coarse_labels(probabilities: np.ndarray) -> np.ndarray:
    return _running_argmax(lambda c: probabilities[c].astype(np.float32),
                           probabilities.shape[0])


def _uniform_cells(labels: np.ndarray) -> np.ndarray:
    """True where all 2^d corners of the cell starting at each voxel share its label (the
    upper corners edge-clamped, as the interpolator clamps them)."""
    padded = np.pad(labels, [(0, 1)] * labels.ndim, mode="edge")
    uniform = np.ones(labels.shape, dtype=bool)
    for shift in product((0, 1), repeat=labels.ndim):
        if any(shift):
            view = padded[tuple(slice(s, s + n) for s, n in zip(shift, labels.shape,
                                                                  strict=True))]
            uniform &= view == labels
    return uniform


def _interpolated_argmax(probabilities: np.ndarray, axes_f: list[_Axis], rows: slice,
                         mixed: tuple[np.ndarray, ...]) -> np.ndarray:
    """Argmax over classes of the linear interpolation at the ``mixed`` voxels of a slab.

    ``probabilities`` is ``(K, *coarse)`` in the frame's axis order. The slab's rows are first
    interpolated along every axis but the last, for all their voxels (a few coarse-sized
    passes); only the last axis, whose two corners are gathered per voxel, is interpolated at
    the mixed voxels alone.
    """
    nd = len(axes_f)
    ax0 = axes_f[0]
    part = _lerp(probabilities, ax0.i0[rows], ax0.i1[rows], ax0.w[rows], axis=1)
    for d in range(1, nd - 1):
        ax = axes_f[d]
        part = _lerp(part, ax.i0, ax.i1, ax.w, axis=d + 1)
    # flat index of each mixed voxel's row in ``part[c]`` (all axes but the last)
    base = np.zeros(mixed[0].shape, dtype=np.int64)
    for d in range(nd - 1):
        base = base * part.shape[d + 1] + mixed[d]
    last, n_last = axes_f[-1], part.shape[-1]
    base *= n_last
    f0 = base + last.i0[mixed[-1]]
    f1 = base + last.i1[mixed[-1]]
    w = last.w[mixed[-1]]
    flat = part.reshape(part.shape[0], -1)
    return _running_argmax(
        lambda c: np.take(flat[c], f0) * (1 - w) + np.take(flat[c], f1) * w, part.shape[0])


def linear_onto(probabilities: np.ndarray, src: ImageMeta, dst: ImageMeta,
                dst_shape: tuple[int, ...], *, order: str = "C",
                dtype: type = np.float16) -> np.ndarray | None:
    """``(K, *dst_shape)`` linear resampling of each channel onto ``dst`` (0 outside ``src``),
    computed separably in slabs straight into ``dtype``: no full-resolution float32 volume.

    Same values as ``resample_onto(..., order=1)`` (to float rounding) on axis-aligned grids;
    ``None`` for any other pair of grids.
    """
    plan = _plan(probabilities, src, dst, dst_shape, order)
    if plan is None:
        return None
    k, nd, perm, axes_f = plan
    # each class's plane is contiguous in ``order`` (for "F", the whole array read as
    # ``(*spatial, K)`` is Fortran-ordered, the layout of a 4D NIfTI)
    out = np.empty((k, *dst_shape), dtype=dtype)
    if order == "F":
        out = np.empty((k, *dst_shape[::-1]), dtype=dtype).transpose(0, *range(nd, 0, -1))
    row_voxels = int(np.prod([len(ax.w) for ax in axes_f[1:]]))
    for c in range(k):
        plane = probabilities[c].transpose(perm)
        out_f = out[c].transpose(perm)
        for rows in slabs(out_f.shape[0], row_voxels):
            lo, hi = axes_f[0].i0[rows], axes_f[0].i1[rows]
            first, last = int(lo.min()), int(hi.max()) + 1
            part = plane[first:last]  # float32 from the first interpolation on (a smaller
            # array when shrinking: no float copy of a large integer source)
            for d in range(nd - 1, 0, -1):  # interpolate the other axes, last first
                part = _lerp(part, axes_f[d].i0, axes_f[d].i1, axes_f[d].w, axis=d)
            value = _lerp(part, lo - first, hi - first, axes_f[0].w[rows], axis=0)
            outside = _outside(axes_f, rows)
            if outside is not None:
                value[np.broadcast_to(outside, value.shape)] = 0
            out_f[rows] = value
    return out
