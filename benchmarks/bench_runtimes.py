"""Would another runtime make the 2D networks faster on this CPU?

The engine runs PyTorch eagerly, channels-last, float32 unless the CPU has native bf16
(``bench_cpu_paths.py``). This script times the same forward pass of shipped 2D models under
the alternatives the issue names, on the batches the engine feeds them:

* ``eager``: what the engine does today;
* ``compile``: ``torch.compile`` (inductor; a C++ compiler must be installed);
* ``onnxruntime``: the network exported with ``torch.onnx.export`` and run by ONNX Runtime's
  CPU provider with all graph optimisations (only if ``onnxruntime`` is installed; it is not a
  medseg dependency).

For each: the median of ``--repeats`` timed passes after 2 warm-ups, the largest logit
difference to eager and the fraction of pixels whose argmax label differs. A runtime would be
worth an optional dependency only if it is faster here by a clear margin with the same labels.

It also profiles the eager pass (share of time in convolutions vs normalisation), which bounds
what any runtime can win: convolutions run by oneDNN are near the CPU's arithmetic peak.

Usage (repository root, nothing else running)::

    .venv/bin/python benchmarks/bench_runtimes.py | tee -a benchmarks/results/runtimes_2d.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medseg.inference.engine import Segmenter
from medseg.training.runtime import cpu_name

#: (model, batch shape as the engine runs it, what the batch is)
CASES = (
    ("isbi2012", (16, 1, 256, 256), "the 16 windows of one 512x512 slice (--windows)"),
    ("isbi2012", (1, 1, 576, 576), "one 512x512 slice whole (reflected to 576x576)"),
    ("nuclei", (1, 1, 256, 256), "one 256x256 image whole"),
)


class _FirstOutput(torch.nn.Module):
    """The network's main output (deep supervision heads are off in eval, but be sure)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y[0] if isinstance(y, (list, tuple)) else y


def median_time(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def onnx_session(net: torch.nn.Module, x: torch.Tensor, threads: int, folder: Path):
    import onnxruntime as ort

    path = folder / "net.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h", 3: "w"}},
                      opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def conv_share(net: torch.nn.Module, x: torch.Tensor) -> str:
    with torch.profiler.profile() as prof:
        net(x)
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows)
    conv = sum(r.self_cpu_time_total for r in rows if "conv" in r.key)
    norm = sum(r.self_cpu_time_total for r in rows if "norm" in r.key)
    return f"convolutions {conv / total:.0%}, normalisation {norm / total:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    print(f"# cpu: {cpu_name()}; torch {torch.__version__}; onnxruntime {ort_version or 'absent'}; "
          f"load average before {os.getloadavg()[0]:.1f}")
    print(f"{'model':10s} {'batch':18s} thr {'runtime':12s} {'s/pass':>8s} {'vs eager':>8s} "
          f"{'max|dlogit|':>11s} {'labels differ':>13s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, what in CASES:
            seg = Segmenter.from_file(name)  # as the engine loads it (GroupNorm, channels-last)
            net = _FirstOutput(seg.model).eval()
            torch.manual_seed(0)
            x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
            print(f"# {name} {tuple(shape)}: {what}")
            for threads in args.threads:
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    ref = net(x)
                    if threads == args.threads[0]:
                        print(f"#   eager profile: {conv_share(net, x)}")
                    runs: dict[str, Callable[[], torch.Tensor]] = {
                        "eager": lambda n=net, a=x: n(a)}
                if not args.no_compile:
                    compiled = torch.compile(net)
                    runs["compile"] = lambda c=compiled, a=x: _inference(c, a)
                if ort_version is not None:
                    session = onnx_session(net, x.contiguous(), threads, Path(tmp))
                    xn = x.contiguous().numpy()
                    runs["onnxruntime"] = lambda s=session, a=xn: torch.from_numpy(
                        s.run(None, {"x": a})[0])
                eager_s = None
                for runtime, fn in runs.items():
                    with torch.inference_mode():
                        y = fn()
                        seconds = median_time(fn, args.repeats)
                    eager_s = eager_s or seconds
                    diff = float((y.float() - ref).abs().max())
                    differ = float((y.argmax(1) != ref.argmax(1)).float().mean())
                    print(f"{name:10s} {str(tuple(shape)):18s} {threads:3d} {runtime:12s} "
                          f"{seconds:8.3f} {seconds / eager_s:8.2f} {diff:11.2e} "
                          f"{differ:13.6f}")
    print(f"# load average after {os.getloadavg()[0]:.1f}")


def _inference(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net(x)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
