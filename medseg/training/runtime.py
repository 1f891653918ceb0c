"""Where and how a run executes: device, mixed precision, distributed rank, seeds.

Picked once at the edge (never ``"cuda"`` as a default inside the library). Distributed runs
(torchrun) set ``RANK``/``WORLD_SIZE``; only rank 0 logs, shows progress and writes files.
"""

from __future__ import annotations

import logging
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.devices import BF16_FLAGS, autocast_dtype, resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Execution context of a run.

    Attributes:
        device: Torch device the network runs on.
        amp_dtype: Autocast dtype (``None`` = full precision).
        rank: Process rank (0 when not distributed).
        world_size: Number of processes.
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, object]:
        """Machine description for the model card."""
        d: dict[str, object] = {
            "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "world_size": self.world_size,
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        }
        if self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
        return d


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and its widest vector and bf16 instructions,
    for records and benchmark outputs: one model name ("AMD EPYC") covers machines with
    AVX-512 bf16 and machines with AVX2 only, whose speeds differ several times over.

    Examples:
        >>> cpu_name() != ""
        True
    """
    name = platform.processor() or "unknown"
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name
    for line in info.splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    return f"{name} ({instruction_sets(flags)})"


def instruction_sets(flags: list[str]) -> str:
    """The vector and bf16 instructions that set a CPU's training and inference speed.

    Examples:
        >>> instruction_sets(["avx", "avx2", "fma"])
        'AVX2, no bf16'
        >>> instruction_sets(["avx2", "avx512f", "avx512_bf16"])
        'AVX-512, avx512_bf16'
        >>> instruction_sets(["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"])
        'AVX-512, amx_bf16, avx512_bf16'
    """
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = sorted(f for f in flags if f in BF16_FLAGS)
    return ", ".join([widest, *(bf16 or ["no bf16"])])


def pick_runtime(*, device: str | None, amp: str) -> Runtime:
    """Choose device and precision: CUDA when present (unless ``device`` says otherwise)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
                           if torch.cuda.is_available() else "cpu")
    else:
        dev = resolve_device(device)
    amp_dtype = autocast_dtype(amp, dev)  # the same rule as inference and napari
    return Runtime(dev, amp_dtype, rank, world)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (weights init); run randomness uses its own generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
