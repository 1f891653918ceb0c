"""Sliding-window inference that never holds whole-volume float logits.

The padded volume is cut into *blocks* by every window edge along every axis. Each window's
Gaussian-weighted logits are added into the blocks it covers, kept in a small dictionary; a
block is final once the last window that covers it has run, and is then turned into what the
caller asked for (uint8 labels, float16 probabilities, or float32 logits) and freed. Windows
run in row-major order, the grid's ``slab_axis`` outermost and the shortest axis innermost, so
the blocks alive at any time are the overlap of the current row with the next one plus the
current window's neighbourhood. Unless logits are asked for, the sums are kept relative to
class 0 (``K - 1`` channels; labels and softmax probabilities are unchanged by a common shift of
a voxel's logits). So the sums stay a small fraction of MONAI's whole-volume float32 output
and count map (``benchmarks/results/inference_large.txt``). Finished label blocks are kept
bit-packed (2 bits a voxel for 3-4 classes) and the uint8 label map is assembled after the
last window, so that it is not resident while the network runs.

The window positions, Gaussian importance map (``monai.data.utils.compute_importance_map``) and
averaging are MONAI's, so on a volume that the grid tiles exactly the result equals
``monai.inferers.sliding_window_inference`` on the reflection-padded image (tested).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medseg.devices import resolve_device
from medseg.errors import CancelledError
from medseg.inference.windows import WindowGrid, WindowReader, plan_windows

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


@dataclass
class WindowOutputs:
    """What :func:`run_window_grid` produced, on the unpadded grid.

    Attributes:
        labels: ``(*spatial)`` argmax labels (uint8, uint16 above 255 classes), or ``None``.
        probabilities: ``(K, *spatial)`` softmax probabilities (float16), or ``None``.
        logits: ``(K, *spatial)`` blended logits (float32 tensor), or ``None``.
        num_windows: Windows run (each possibly several forward passes with TTA).
    """

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    logits: torch.Tensor | None = None
    num_windows: int = 0


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Labels below ``2**bits`` (uint8; ``bits`` 1, 2 or 4), ``8 // bits`` to a byte, in C order."""
    per = 8 // bits
    flat = values.reshape(-1)
    if flat.size % per:
        flat = np.concatenate([flat, np.zeros(per - flat.size % per, dtype=np.uint8)])
    groups = flat.reshape(-1, per)
    packed = groups[:, 0].copy()
    for i in range(1, per):
        packed |= groups[:, i] << np.uint8(bits * i)
    return packed


def unpack_bits(packed: np.ndarray, bits: int, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the uint8 labels of ``shape``."""
    per, mask = 8 // bits, np.uint8((1 << bits) - 1)
    groups = np.empty((packed.size, per), dtype=np.uint8)
    for i in range(per):
        np.bitwise_and(packed >> np.uint8(bits * i), mask, out=groups[:, i])
    return groups.reshape(-1)[:math.prod(shape)].reshape(shape)


class _Sink:
    """Turns finished blocks into the requested outputs (cropping the padding).

    With ``pack`` (and at most 16 classes), finished label blocks are kept at 1, 2 or 4 bits per
    voxel and the label map is assembled by :meth:`finish`, after the last window: while the
    network runs, a 3-class map takes a quarter of its uint8 size.
    """

    def __init__(self, grid: WindowGrid, num_classes: int, *, labels: bool, probabilities: bool,
                 logits: bool, order: str = "C", pack: bool = False) -> None:
        self.grid = grid
        self.out = WindowOutputs()
        self.order = order
        self.bits = (next((b for b in (1, 2, 4) if num_classes <= 1 << b), 0)
                     if pack and labels else 0)
        self.packed: list[tuple[tuple[slice, ...], tuple[int, ...], np.ndarray]] = []
        if labels and not self.bits:
            dtype = np.uint8 if num_classes <= 256 else np.uint16
            self.out.labels = np.zeros(grid.shape, dtype=dtype, order=order)
        if probabilities:
            self.out.probabilities = np.zeros((num_classes, *grid.shape), dtype=np.float16)
        if logits:
            self.out.logits = torch.zeros((num_classes, *grid.shape), dtype=torch.float32)
        self.needs_count = probabilities or logits
        # Labels and probabilities do not change when a voxel's logits all move by the same
        # amount, so without a logits output the sums keep K - 1 channels, logit_c - logit_0
        # (a third less memory for 3 classes, half for 2); emit() puts the zero channel back.
        self.relative = num_classes > 1 and not logits

    def emit(self, lo: Sequence[int], acc: torch.Tensor, count: torch.Tensor | None) -> None:
        """``acc``/``count`` hold the padded region starting at ``lo`` (one start per axis)."""
        src, dst = [], []
        for ax, start in enumerate(lo):
            c0, c1 = self.grid.crop(ax)
            first, last = max(start, c0), min(start + acc.shape[1 + ax], c1)
            if first >= last:
                return
            src.append(slice(first - start, last - start))
            dst.append(slice(first - c0, last - c0))
        block = acc[(slice(None), *src)]
        if self.bits or self.out.labels is not None:
            # packed labels are uint8; torch has no masked_fill for uint16, hence int32
            wide = not self.bits and self.out.labels.dtype != np.uint8
            lab = argmax_channels(block, dtype=torch.int32 if wide else torch.uint8,
                                  relative=self.relative).cpu().numpy()
            if self.bits:
                self.packed.append((tuple(dst), lab.shape, pack_bits(lab, self.bits)))
            else:
                self.out.labels[tuple(dst)] = lab.astype(self.out.labels.dtype, copy=False)
        if count is not None:
            if self.relative:  # the zero channel 0 back, for the softmax
                block = torch.cat([block.new_zeros((1, *block.shape[1:])), block])
            mean = block.float() / count[(slice(None), *src)].float()
            if self.out.logits is not None:
                self.out.logits[(slice(None), *dst)] = mean.cpu()
            if self.out.probabilities is not None:
                prob = torch.softmax(mean, dim=0) if mean.shape[0] > 1 else torch.sigmoid(mean)
                self.out.probabilities[(slice(None), *dst)] = prob.half().cpu().numpy()

    def finish(self) -> WindowOutputs:
        """The outputs, with packed label blocks (if any) unpacked into the label map."""
        if self.bits:
            labels = np.zeros(self.grid.shape, dtype=np.uint8, order=self.order)
            self.packed.reverse()
            while self.packed:  # each block freed as soon as it is placed
                dst, shape, packed = self.packed.pop()
                labels[dst] = unpack_bits(packed, self.bits, shape)
            self.out.labels = labels
        return self.out


def _stitch_terms(pred: torch.Tensor, *, relative: bool, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """A fresh ``dtype`` copy on ``device`` of one window's logits ``(K, *roi)`` to be weighted
    and summed: as they are, or relative to channel 0 (``logit_c - logit_0``, ``K - 1``
    channels)."""
    # Channels first: a channels-last network output would make every later step strided.
    terms = pred.to(device, dtype, copy=True, memory_format=torch.contiguous_format)
    if not relative:
        return terms
    return terms[1:].sub_(terms[:1])


def argmax_channels(scores: torch.Tensor, *, dtype: torch.dtype = torch.uint8,
                    relative: bool = False) -> torch.Tensor:
    """Index of the largest channel of ``(K, *spatial)`` scores (first one on ties), as
    ``dtype``; a single channel is a sigmoid logit (label 1 where it is > 0).

    With ``relative``, ``scores`` are the ``K - 1`` channels ``s_c - s_0`` of ``K`` classes
    (``c >= 1``) and class 0 scores an implicit zero: the same labels without building the
    zero channel.

    Hand-written: a running maximum over a few classes is much faster on CPU than
    ``torch.argmax(dim=0)`` and returns the small dtype directly.
    """
    if scores.shape[0] == 1:  # sigmoid logit, or s_1 - s_0 of two classes: the same rule
        return (scores[0] > 0).to(dtype)
    first = 0 if relative else 1
    best = torch.zeros_like(scores[0]) if relative else scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=dtype, device=scores.device)
    for c in range(first, scores.shape[0]):
        index.masked_fill_(scores[c] > best, c + int(relative))
        torch.maximum(best, scores[c], out=best)
    return index


def _batched(items: Sequence[tuple[int, ...]], size: int) -> Iterator[Sequence[tuple[int, ...]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_window_grid(
    reader: WindowReader,
    predictor: Predictor,
    *,
    device: torch.device,
    stitch_device: torch.device | None = None,
    stitch_dtype: torch.dtype = torch.float32,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    sw_batch_size: int = 1,
    labels: bool = True,
    probabilities: bool = False,
    logits: bool = False,
    labels_order: str = "C",
    pack_labels: bool = True,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> WindowOutputs:
    """Run ``predictor`` over every window of ``reader.grid`` and stitch the results.

    Args:
        reader: Gives each (normalised, reflection-padded) window.
        predictor: Maps ``(B, C, *roi)`` on ``device`` to logits ``(B, K, *roi)``.
        device: Where windows are computed.
        stitch_device: Where the block sums live (default: ``device``).
        stitch_dtype: Its dtype: float32, or float16 for half the memory (sums of at most
            2^d Gaussian-weighted logits keep ~3 significant digits; labels agree with float32
            except at near-ties, see ``benchmarks/results/inference_large.txt``).
        blend: ``"gaussian"`` or ``"constant"`` (MONAI's importance maps).
        sigma_scale: Gaussian sigma as a fraction of the window size.
        sw_batch_size: Windows per forward pass.
        labels, probabilities, logits: Which outputs to produce.
        labels_order: Memory layout of the label map, ``"C"`` or ``"F"`` (match the input's, so
            that writing it, e.g. as NIfTI, which stores the first axis fastest, is one copy).
        pack_labels: Keep finished label blocks bit-packed (up to 16 classes) and assemble the
            label map after the last window, so that it is not resident while the network runs.
        progress: Called as ``progress(windows_done, windows_total)``.
        should_cancel: Polled before every batch; ``True`` raises :class:`CancelledError`.

    Returns:
        The requested outputs on the unpadded grid.
    """
    from monai.data.utils import compute_importance_map

    grid = reader.grid
    stitch_device = stitch_device or device
    weight = compute_importance_map(grid.roi_size, mode=blend, sigma_scale=sigma_scale,
                                    device=stitch_device, dtype=stitch_dtype)[None]
    plan = _BlockPlan(grid)
    # Allocated at the first prediction, when the number of classes is known.
    sink: _Sink | None = None
    acc: dict[tuple[int, ...], torch.Tensor] = {}
    count: dict[tuple[int, ...], torch.Tensor] = {}
    done, total = 0, len(plan.corners)
    for batch in _batched(plan.corners, sw_batch_size):
        if should_cancel is not None and should_cancel():
            raise CancelledError("prediction cancelled")
        windows = (np.stack([reader.read(c) for c in batch]) if len(batch) > 1
                   else reader.read(batch[0])[None])  # one window: no stacking copy
        x = torch.from_numpy(windows).to(device)
        y = predictor(x)
        if sink is None:
            sink = _Sink(grid, int(y.shape[1]), labels=labels, probabilities=probabilities,
                         logits=logits, order=labels_order, pack=pack_labels)
            logger.debug("window grid %s: %d windows, %d blocks, %d classes, stitched on %s",
                         grid.padded_shape, total, len(plan.last_window), y.shape[1],
                         stitch_device)
        for corner, pred in zip(batch, y, strict=True):
            scored = _stitch_terms(pred, relative=sink.relative, device=stitch_device,
                                   dtype=stitch_dtype).mul_(weight)
            for block, lo, src in plan.blocks_of(corner):
                part = scored[(slice(None), *src)]
                if block in acc:
                    acc[block] += part
                else:
                    acc[block] = part.clone()
                if sink.needs_count:
                    w = weight[(slice(None), *src)]
                    if block in count:
                        count[block] += w
                    else:
                        count[block] = w.clone()
                if plan.last_window[block] == corner:  # no later window reaches it
                    sink.emit(lo, acc.pop(block), count.pop(block, None))
            del scored
        done += len(batch)
        if progress is not None:
            progress(done, total)
    assert sink is not None and not acc  # a grid has at least one window; every block emitted
    out = sink.finish()
    out.num_windows = total
    return out


class _BlockPlan:
    """The window order and the blocks (cut by every window edge) each window covers.

    Attributes:
        corners: Window start corners in run order: row-major over the axes ordered
            ``slab_axis`` first, then by decreasing padded extent.
        last_window: For every block (a tuple of cell indices), the corner of the last window
            in run order that covers it.
    """

    def __init__(self, grid: WindowGrid) -> None:
        dims = len(grid.shape)
        axes = [grid.slab_axis] + sorted((ax for ax in range(dims) if ax != grid.slab_axis),
                                         key=lambda ax: (-grid.padded_shape[ax], ax))
        self.cells: list[list[tuple[int, int]]] = []
        self.covered: list[dict[int, list[int]]] = []
        for ax in range(dims):
            roi, starts = grid.roi_size[ax], grid.starts[ax]
            edges = sorted({*starts, *(s + roi for s in starts)})
            cells = list(zip(edges[:-1], edges[1:], strict=True))
            self.cells.append(cells)
            self.covered.append({s: [i for i, (lo, hi) in enumerate(cells)
                                     if s <= lo and hi <= s + roi] for s in starts})
        self.roi = grid.roi_size
        self.corners: list[tuple[int, ...]] = []
        for combo in itertools.product(*(grid.starts[ax] for ax in axes)):
            corner = [0] * dims
            for ax, start in zip(axes, combo, strict=True):
                corner[ax] = start
            self.corners.append(tuple(corner))
        self.last_window: dict[tuple[int, ...], tuple[int, ...]] = {}
        for corner in self.corners:
            for block in itertools.product(*(self.covered[ax][s] for ax, s in enumerate(corner))):
                self.last_window[block] = corner

    def blocks_of(self, corner: tuple[int, ...]
                  ) -> Iterator[tuple[tuple[int, ...], list[int], tuple[slice, ...]]]:
        """``(block, its padded start, its slices within the window)`` for one window."""
        for block in itertools.product(*(self.covered[ax][s] for ax, s in enumerate(corner))):
            spans = [self.cells[ax][c] for ax, c in enumerate(block)]
            yield (block, [lo for lo, _ in spans],
                   tuple(slice(lo - s, hi - s) for (lo, hi), s in zip(spans, corner, strict=True)))


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` for ``amp_dtype`` on ``device``, or a no-op when ``None``."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def sliding_window_logits(
    predictor: Predictor,
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    margin: Sequence[int] | int | None = None,
    blend: str = "gaussian",
    sw_batch_size: int = 1,
) -> torch.Tensor:
    """Blended logits ``(K, *S)`` (float32, CPU) of one normalised image ``(C, *S)``.

    The windowed forward pass shared by training validation and the engine: reflection padding
    (overlap-tile, see :func:`medseg.inference.windows.plan_windows`), Gaussian blending,
    windows computed on ``device`` under optional autocast.

    Args:
        predictor: A network or any callable ``(B, C, *roi) -> (B, K, *roi)``.
        image: Normalised image, channel-first.
        roi_size: Window size.
        overlap: Window overlap in ``[0, 1)``.
        device: Compute device; ``None``: CUDA if available, else CPU.
        amp_dtype: Autocast dtype (``torch.bfloat16``/``torch.float16``) or ``None`` for fp32.
        margin: Reflected context per side; ``None``: ``windows.default_margin``.
        blend: ``"gaussian"`` or ``"constant"``.
        sw_batch_size: Windows per forward pass.
    """
    device = resolve_device(device)
    array = image.detach().cpu().numpy()
    grid = plan_windows(array.shape[1:], roi_size, overlap=overlap, margin=margin)
    reader = WindowReader(array, grid)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, amp_dtype):
            out = predictor(x)
        return out.float()

    with torch.inference_mode():
        out = run_window_grid(reader, run, device=device, blend=blend,
                              sw_batch_size=sw_batch_size, labels=False, logits=True)
    assert out.logits is not None
    return out.logits
