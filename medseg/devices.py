"""Device and precision, one rule for training, inference and the napari plugin.

* :func:`resolve_device`: the compute device from a user's choice (``None``: CUDA when there
  is one, else CPU), with a one-line :class:`~medseg.errors.ConfigError` for an unknown name
  or a CUDA device this machine does not have.
* :func:`autocast_dtype`: the autocast dtype. Auto: on CUDA bfloat16 where the GPU supports it
  (Ampere and later), else float16; on CPU bfloat16 only where the CPU has it natively
  (AMX-BF16 / AVX512-BF16); elsewhere none (float32).
"""

from __future__ import annotations

from pathlib import Path

import torch

from medseg.errors import ConfigError

#: What ``amp`` may be: ``None``/``"auto"``, ``True``/``"on"``, ``False``/``"off"``, or a dtype
#: name ``"bf16"`` / ``"fp16"``.
AmpChoice = bool | str | None


#: The ``/proc/cpuinfo`` flags of bf16 matrix instructions (AMX-BF16, AVX512-BF16).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (:data:`BF16_FLAGS`)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be conservative
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The compute device: as given, or CUDA when available, else CPU (chosen at the edge).

    Raises:
        ConfigError: An unknown device name, or a CUDA device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: no CUDA device is available here (torch "
                              f"{torch.__version__}); use cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"device {device!r}: only {count} CUDA device(s) here")
    return resolved


def autocast_dtype(amp: AmpChoice, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None``: float32, no autocast).

    Raises:
        ConfigError: An unknown choice, or float16 autocast asked for on a CPU.
    """
    choice = {None: "auto", True: "on", False: "off"}.get(amp, amp)  # type: ignore[call-overload]
    if choice not in ("auto", "on", "off", "bf16", "fp16"):
        raise ConfigError(f"amp must be auto, on, off, bf16 or fp16, got {amp!r}")
    cuda = device.type == "cuda"
    if choice == "off" or (choice == "auto" and not cuda and not cpu_has_native_bf16()):
        return None
    if choice == "fp16":
        if not cuda:
            raise ConfigError("fp16 autocast is for CUDA; use bf16 or off on a CPU")
        return torch.float16
    if choice == "bf16" or not cuda:
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
