"""Low-memory mode: give freed large buffers back to the operating system (glibc).

glibc serves allocations above its *mmap threshold* with their own mappings, unmapped on free.
The threshold is dynamic: each freed mapping raises it (up to 32 MB on 64-bit), so after the
first few windows the window-sized tensors (activations, logits) come from the heap, where
freed memory is kept for reuse and fragments. Fixing the threshold at 1 MB turns that off.

Without low-memory mode, CPU inference fixes the thresholds the other way
(:func:`keep_freed_memory`: mmap threshold 32 MB, trim threshold 128 MB): left dynamic, glibc
still hands the heap's freed top back to the system after each forward pass and faults it in
again on the next, which cost a 2D model over a 36-slice volume a fifth of its time at two
threads (0.553 -> 0.449 s, ``benchmarks/results/tumour_speed.txt``); at most 128 MB of freed
memory is kept, and buffers of 32 MB and more still get their own mappings.

Low-memory mode is a trade, so it is opt-in (``InferenceOptions(low_memory=True)``, ``medseg-predict
--low-memory``): the peak falls, but every layer's output is then a fresh mapping whose pages
fault in, so forward passes are slower (figures: ``benchmarks/results/inference_large.txt``).
Thresholds of 16-32 MB keep the speed and save nothing. Process-wide, applied once.

Most of that cost is page faults, one per 4 KB page. The mode therefore also asks torch's CPU
allocator for transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``: buffers of 2 MB and more are
page-aligned and ``madvise(MADV_HUGEPAGE)``-d, up to 512 times fewer faults) where the kernel allows
it (``/sys/kernel/mm/transparent_hugepage/enabled`` not ``never``). torch reads that setting
at its first such buffer, so it must be set before the model is loaded:
``Segmenter.from_file`` does so in low-memory mode (``medseg-predict --low-memory`` loads
through it); a process that built its network itself should export the variable (a log line
says when it came too late). Huge pages recover most of the lost speed
(``benchmarks/results/inference_large.txt``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
#: glibc's default trim threshold, which low-memory mode restores.
_GLIBC_TRIM_THRESHOLD = 128 << 10
#: :func:`keep_freed_memory`'s thresholds.
FAST_MMAP_THRESHOLD = 32 << 20
FAST_TRIM_THRESHOLD = 128 << 20
_HUGE_PAGE = 2 << 20
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_applied: bool | None = None
_kept: bool | None = None


@functools.cache
def request_huge_pages() -> bool:
    """Ask torch's CPU allocator for transparent huge pages (Linux; a no-op elsewhere).

    Sets ``THP_MEM_ALLOC_ENABLE=1`` unless the environment already says otherwise, then checks
    that it took: torch reads it once, at its first buffer of 2 MB or more (the probe's, at the
    latest), so the answer is final and later calls return it without probing again.

    Returns:
        Whether torch now requests huge pages for its large buffers.
    """
    if sys.platform != "linux":
        return False
    try:
        if "[never]" in _THP_SETTING.read_text():
            return False
    except OSError:
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    import torch

    # With it, torch page-aligns buffers of >= 2 MB (then madvises them); without, 64 bytes.
    page = os.sysconf("SC_PAGE_SIZE")
    probes = [torch.empty(_HUGE_PAGE * 2, dtype=torch.uint8) for _ in range(2)]
    return all(p.data_ptr() % page == 0 for p in probes)


def _mallopt(*settings: tuple[int, int]) -> bool:
    """glibc's ``mallopt(param, value)`` for each setting; whether all took (``False`` off
    glibc, and then malloc is left alone)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(bool(libc.mallopt(param, value)) for param, value in settings)
    except (OSError, AttributeError) as exc:  # not the glibc we expected
        logger.debug("mallopt unavailable: %s", exc)
        return False


def release_freed_memory(threshold_bytes: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes`` and its trim threshold at glibc's
    default (once per process; the latter undoes :func:`keep_freed_memory` if CPU inference
    came first).

    Returns:
        Whether the setting is in effect (``False`` off glibc).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = _mallopt((_M_MMAP_THRESHOLD, int(threshold_bytes)),
                        (_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD))
    if _applied:
        huge = request_huge_pages()
        logger.info("low-memory mode: glibc mmap threshold fixed at %d bytes; torch huge pages "
                    "%s", threshold_bytes, "on" if huge else
                    "off (export THP_MEM_ALLOC_ENABLE=1 before loading the model to speed it up)")
    return _applied


def keep_freed_memory() -> bool:
    """Fix glibc's mmap threshold at :data:`FAST_MMAP_THRESHOLD` and its trim threshold at
    :data:`FAST_TRIM_THRESHOLD` (once per process; never after low-memory mode, whose setting
    then stands).

    Returns:
        Whether the setting is in effect (``False`` off glibc or in low-memory mode).
    """
    global _kept
    if _applied:  # low-memory mode asked for the opposite
        return False
    if _kept is not None:
        return _kept
    _kept = _mallopt((_M_MMAP_THRESHOLD, FAST_MMAP_THRESHOLD),
                     (_M_TRIM_THRESHOLD, FAST_TRIM_THRESHOLD))
    if _kept:
        logger.debug("glibc mmap threshold %d, trim threshold %d bytes", FAST_MMAP_THRESHOLD,
                     FAST_TRIM_THRESHOLD)
    return _kept
