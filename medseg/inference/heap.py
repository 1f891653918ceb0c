"""Low-memory mode: give freed large buffers back to the operating system (glibc).

glibc serves allocations above its *mmap threshold* with their own mappings, unmapped on free.
The threshold is dynamic: each freed mapping raises it (up to 32 MB on 64-bit), so after the
first few windows the window-sized tensors (activations, logits) come from the heap, where
freed memory is kept for reuse and fragments. Fixing the threshold at 1 MB turns that off.

It is a trade, so it is opt-in (``Segmenter(low_memory=True)``, ``medseg-predict
--low-memory``, or ``MEDSEG_LOW_MEMORY=1``). Measured on the 512x512x200 CT benchmark
(``benchmarks/results/inference_large.txt``, one run): peak RSS 906 -> 806 MB (bf16), but
every layer's output is then a fresh mapping whose pages fault in, and the 50 forward passes
took 36.1 s instead of 19.8 s. Thresholds of 16-32 MB keep the speed and save nothing.
Process-wide, applied once.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_applied: bool | None = None


def release_freed_memory(threshold_bytes: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes`` (once per process).

    Returns:
        Whether the setting is in effect (``False`` off glibc).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError) as exc:  # not the glibc we expected: leave malloc alone
        logger.debug("mallopt unavailable: %s", exc)
    if _applied:
        logger.info("low-memory mode: glibc mmap threshold fixed at %d bytes", threshold_bytes)
    return _applied
