"""Is each CPU fast path the engine picks also the faster one on this CPU?

The engine chooses per CPU: channels-last memory layout for convolutions (``channels_last=None``
-> on for CPU), bf16 autocast only where the CPU has native bf16 (AMX-BF16 / AVX512-BF16), and
the thread count the user gives (``--threads``, default all cores). This script times the
forward pass of every shipped model (InstanceNorm swapped for GroupNorm, as the engine loads
it on CPU) on a batch of its own windows (``sw_batch_size`` as the
engine runs it: one window for 3D models, a batch of slices for the 2D ones) under each
alternative, so a choice that is slower on this kind of CPU shows up.

Each variant: 2 warm-up passes, then the median of ``--repeats`` timed passes, under
``torch.inference_mode``. bf16 is timed only when this CPU has it natively (else the engine
never turns it on, and emulated bf16 is known to be several times slower).

Usage (repository root)::

    .venv/bin/python benchmarks/bench_cpu_paths.py | tee -a benchmarks/results/cpu_paths.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from medseg.devices import cpu_has_native_bf16
from medseg.inference.engine import instance_norm_as_group_norm
from medseg.model_card import load_model
from medseg.models import resolve_model
from medseg.training.runtime import cpu_name

MODELS = ("demo-liver-lesion", "hippocampus", "brain-flair-tumour", "nuclei")


def batch_for(card) -> torch.Tensor:  # noqa: ANN001 - ModelCard
    """The windows the engine feeds this model in one forward pass."""
    roi = [int(r) for r in card.roi_size]
    n = 1 if card.spatial_dims == 3 else max(1, (1 << 19) // (roi[0] * roi[1]))
    torch.manual_seed(0)
    return torch.randn(n, card.network.in_channels, *roi)


def time_forward(model: torch.nn.Module, x: torch.Tensor, *, channels_last: bool,
                 bf16: bool, repeats: int) -> float:
    fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    net = model.to(memory_format=fmt if channels_last else torch.contiguous_format)
    xin = x.contiguous(memory_format=fmt) if channels_last else x.contiguous()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(xin)
            if i >= 2:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    bf16_native = cpu_has_native_bf16()
    print(f"# {__doc__.splitlines()[0]}")
    print(f"# cpu: {cpu_name()}; native bf16: {bf16_native}; torch {torch.__version__}; "
          f"load average before {os.getloadavg()[0]:.1f}")
    print(f"{'model':20s} {'batch':>16s} {'threads':>7s} {'layout':>13s} {'dtype':>5s} "
          f"{'s/pass':>8s}")
    for name in args.models:
        model, card = load_model(resolve_model(name))
        instance_norm_as_group_norm(model)  # as Segmenter.from_file runs it on CPU
        model.eval()
        x = batch_for(card)
        best: dict[int, tuple[float, str]] = {}
        for threads in sorted(set(args.threads)):
            torch.set_num_threads(threads)
            for bf16 in (False, True) if bf16_native else (False,):
                for channels_last in (True, False):
                    s = time_forward(model, x, channels_last=channels_last, bf16=bf16,
                                     repeats=args.repeats)
                    layout = "channels-last" if channels_last else "contiguous"
                    dtype = "bf16" if bf16 else "fp32"
                    print(f"{name:20s} {str(tuple(x.shape)):>16s} {threads:7d} {layout:>13s} "
                          f"{dtype:>5s} {s:8.3f}", flush=True)
                    if threads not in best or s < best[threads][0]:
                        best[threads] = (s, f"{layout} {dtype}")
        engine = f"channels-last {'bf16' if bf16_native else 'fp32'}"
        for threads, (s, what) in best.items():
            verdict = "same" if what == engine else f"FASTER: {what}"
            print(f"# {name}, {threads} thread(s): engine's pick {engine}; fastest {what} "
                  f"({s:.3f} s) -> {verdict}")
    print(f"# load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
