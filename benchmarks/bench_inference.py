"""Large-volume inference: medseg's engine vs MONAI's plain ``sliding_window_inference``.

A synthetic CT-like volume (int16 HU, 512x512x200 voxels, 0.8x0.8x1.5 mm; body, lungs, spine,
noise) is segmented by a random-weight 3-class 3D U-Net (MONAI ``UNet``, channels 16..256,
2 residual units, 128^3 windows, overlap 0.25, Gaussian blending). Every configuration runs in
its own subprocess so that its peak resident memory (``VmHWM`` from ``/proc/self/status``,
which counts torch's allocations that ``tracemalloc``/``ru_maxrss`` mis-measure) is its own.

Configurations (all from the same int16 array in memory unless stated):

* ``baseline-monai`` / ``baseline-medseg``: imports + volume + network only (the floor each
  family pays; medseg's include nibabel and pydicom through ``medseg.io``; SimpleITK and
  highdicom load only when used);
* ``monai-fp32`` / ``monai-bf16``: the user-side MONAI pipeline: float32 tensor, CT
  normalisation, ``sliding_window_inference(mode="gaussian")``, ``argmax`` -> uint8
  (``bf16``: windows under ``torch.autocast(bfloat16)``, channels-last, as medseg runs them);
* ``medseg-fp32-m0`` / ``medseg-bf16-m0``: ``Segmenter.predict`` with ``margin=0`` (no
  reflection margin, so the same number of windows as MONAI);
* ``medseg-e2e``: the full per-case pipeline with default settings (reflection margin, bf16 on
  this CPU): read a ``.nii.gz``, predict, write the label ``.nii.gz`` and the JSON record
  (``medseg.inference.batch.predict_case``);
* ``...-lowmem``: the same with ``Segmenter(low_memory=True)`` and ``THP_MEM_ALLOC_ENABLE=1``
  as ``medseg-predict --low-memory`` runs (``medseg.inference.heap``: smaller peak, slower
  forward passes).
* ``floor-fp32`` / ``floor-bf16``: the medseg baseline plus **one** window's forward pass
  (as the engine runs it) and nothing else. Adding the label map (uint8, or bit-packed as
  medseg keeps it while windows run) gives the least any engine can reach with the input
  volume and its labels in memory; it bounds how small a whole-process peak can get, whatever
  the stitching does.

Overhead = wall time / time spent inside the network's forward calls of that same run (the
network is wrapped by a timer), so both are measured under the same machine load.

Usage (repository root)::

    .venv/bin/python benchmarks/bench_inference.py | tee benchmarks/results/inference_large.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHAPE = (512, 512, 200)
SPACING = (0.8, 0.8, 1.5)
ROI = (128, 128, 128)
OVERLAP = 0.25
CONFIGS = ("baseline-monai", "baseline-medseg", "monai-fp32", "monai-fp32-mmap", "medseg-fp32-m0",
           "monai-bf16", "medseg-bf16-m0", "medseg-e2e", "medseg-bf16-m0-lowmem",
           "medseg-e2e-lowmem", "floor-fp32", "floor-bf16")


def ct_like_volume(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """int16 HU volume: air, an elliptic body, two lungs, a spine; built slice by slice."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    vol = np.empty(shape, dtype=np.int16)
    for k in range(nz):
        t = k / max(nz - 1, 1)
        body = (x / 0.85) ** 2 + (y / (0.6 + 0.05 * np.sin(3 * t))) ** 2 <= 1
        lung = (((np.abs(x) - 0.38) / 0.25) ** 2 + ((y + 0.05) / 0.35) ** 2 <= 1) & (t > 0.3)
        spine = (x / 0.09) ** 2 + ((y - 0.42) / 0.09) ** 2 <= 1
        hu = np.where(body, 40.0, -1000.0)
        hu = np.where(lung & body, -820.0, hu)
        hu = np.where(spine, 700.0, hu)
        hu += rng.normal(0, 25, size=(nx, ny))
        vol[:, :, k] = np.clip(hu, -1024, 3071).astype(np.int16)
    return vol


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_network():  # noqa: ANN201 - torch imported lazily in the worker
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2), num_res_units=2).eval()


def card():  # noqa: ANN201
    from medseg.model_card import ModelCard, NormalizationConfig
    from medseg.networks import NetworkConfig

    return ModelCard(
        name="bench-unet", network=NetworkConfig(spatial_dims=3, in_channels=1, out_channels=3),
        label_names={0: "background", 1: "a", 2: "b"}, roi_size=list(ROI),
        target_spacing=list(SPACING),
        normalization=NormalizationConfig(scheme="ct", clip=(-1000.0, 1000.0), mean=-300.0,
                                          std=500.0))


class Timed(torch.nn.Module):
    """Wraps a network; accumulates the seconds spent in its forward calls."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.seconds, self.calls = net, 0.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        y = self.net(x)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return y


def run_worker(config: str, workdir: Path, threads: int, shape: tuple[int, int, int]
               ) -> dict[str, Any]:
    torch.set_num_threads(threads)
    # medseg-e2e reads its input from the file "prepare" wrote: no volume in memory before
    volume = None if config.startswith("medseg-e2e") else ct_like_volume(shape)
    out: dict[str, Any] = {"config": config}
    if config.endswith("monai"):  # MONAI's family imports nothing from medseg
        from monai.inferers import sliding_window_inference  # noqa: F401 - what MONAI runs load

        _ = make_network()
        out["peak_rss_mb"] = peak_rss_mb()
        return out
    if config.startswith("floor"):
        _run_floor(config, out)
        return out
    if config.startswith("monai"):
        labels = _run_monai(config, volume, out)
    else:
        labels = _run_medseg(config, volume, workdir, out)
    if labels is not None:
        np.save(workdir / f"{config}.npy", labels)
    return out


def _run_monai(config: str, volume: np.ndarray | None, out: dict[str, Any]) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    net = make_network()
    timed = Timed(net)
    bf16 = config.endswith("bf16")
    if bf16:
        net.to(memory_format=torch.channels_last_3d)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        if not bf16:
            return timed(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return timed(x.contiguous(memory_format=torch.channels_last_3d)).float()

    t0 = time.perf_counter()
    with torch.inference_mode():
        assert volume is not None
        x = torch.from_numpy(volume).float()
        x.clamp_(-1000, 1000).sub_(-300).div_(500)
        logits = sliding_window_inference(x[None, None], ROI, 1, predictor, overlap=OVERLAP,
                                          mode="gaussian")
        labels = logits[0].argmax(0).to(torch.uint8).numpy()
    out.update(wall_s=time.perf_counter() - t0, forward_s=timed.seconds, windows=timed.calls,
               peak_rss_mb=peak_rss_mb())
    return labels


def _run_floor(config: str, out: dict[str, Any]) -> None:
    import medseg.inference  # noqa: F401 - what the medseg family loads

    net = make_network()
    bf16 = config.endswith("bf16")
    if bf16:
        net.to(memory_format=torch.channels_last_3d)
    x = torch.zeros((1, 1, *ROI), dtype=torch.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = net(x.contiguous(memory_format=torch.channels_last_3d))
        else:
            y = net(x)
    seconds = time.perf_counter() - t0
    out.update(wall_s=seconds, forward_s=seconds, windows=1, peak_rss_mb=peak_rss_mb(),
               out_channels=int(y.shape[1]))


def _run_medseg(config: str, volume: np.ndarray | None, workdir: Path, out: dict[str, Any]
                ) -> np.ndarray | None:
    from medseg.inference import Segmenter
    from medseg.inference.batch import BatchOptions, predict_case
    from medseg.inference.cases import CaseInput
    from medseg.io import ImageMeta, MedImage, read_image, write_nifti

    meta = ImageMeta(spacing=SPACING, origin=(0.0, 0.0, 0.0),
                     direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    if config == "prepare":  # the input file of medseg-e2e, written outside its measurement
        assert volume is not None
        write_nifti(MedImage(volume[None], meta), workdir / "ct.nii.gz")
        return None
    net = make_network()
    if config == "baseline-medseg":
        out["peak_rss_mb"] = peak_rss_mb()
        return None
    timed = Timed(net)
    e2e = config.startswith("medseg-e2e")
    segmenter = Segmenter(timed, card(), device="cpu", overlap=OVERLAP,
                          amp=None if e2e else config.startswith("medseg-bf16"),
                          margin=None if e2e else 0, low_memory=config.endswith("-lowmem"))
    t0 = time.perf_counter()
    if e2e:
        record = predict_case(CaseInput("ct", workdir / "ct.nii.gz"), segmenter,
                              workdir / config, BatchOptions(formats=("nifti",)))
        if not record.ok:
            raise RuntimeError(record.error)
        out.update(wall_s=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(),
                   stages_s=record.timings_s)
        labels = read_image(workdir / config / "ct.nii.gz").array[0]
    else:
        assert volume is not None
        pred = segmenter.predict(MedImage(volume[None], meta))
        out.update(wall_s=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(),
                   stages_s={k: round(v, 3) for k, v in pred.timings.items()})
        labels = pred.labels.array[0]
    out.update(forward_s=timed.seconds, windows=timed.calls)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every configuration (default 1: on the shared "
                             "2-core machine a second thread waiting on a busy core makes "
                             "timings noise; every configuration gets the same)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--shape", nargs=3, type=int, default=list(SHAPE),
                        help="volume shape (i j k)")
    args = parser.parse_args()
    if args.worker:
        result = run_worker(args.worker, args.workdir, args.threads, tuple(args.shape))
        print(json.dumps(result))
        return

    print(f"# {__doc__.splitlines()[0]}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# volume {tuple(args.shape)} int16, spacing {SPACING} mm; MONAI UNet 16..256 "
          f"(2 res units), 3 classes, random weights; window {ROI}, overlap {OVERLAP}, "
          "Gaussian blending")
    print(f"# cpu: {cpu_name()}; torch threads per run: {args.threads}; load average before: "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'config':16s} {'windows':>7s} {'wall s':>8s} {'forward s':>9s} {'overhead':>8s} "
          f"{'peak RSS MB':>11s} {'above baseline':>14s}  stages")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        needs_file = any(c.startswith("medseg-e2e") for c in args.configs)
        for config in ["prepare", *args.configs] if needs_file else args.configs:
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            if config.endswith("-mmap"):
                env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
            if config.endswith("-lowmem"):  # what Segmenter.from_file(low_memory=True) sets
                env["THP_MEM_ALLOC_ENABLE"] = "1"  # before loading; this network is built here
            proc = subprocess.run([sys.executable, __file__, "--worker", config, "--workdir", tmp,
                                   "--threads", str(args.threads), "--shape",
                                   *map(str, args.shape)],
                                  capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                print(f"# {config} FAILED:\n{proc.stderr[-3000:]}")
                continue
            if config == "prepare":
                continue
            results[config] = json.loads(proc.stdout.strip().splitlines()[-1])
            _print_row(results[config], results)
        _agreement(Path(tmp), results)
    _verdict(results, tuple(args.shape))
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


def _baseline(config: str, results: dict[str, dict[str, Any]]) -> float:
    family = "baseline-monai" if config.startswith("monai") else "baseline-medseg"
    return results[family]["peak_rss_mb"] if family in results else float("nan")


def _print_row(r: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    if r["config"].startswith("baseline"):
        print(f"{r['config']:16s} {'':>7s} {'':>8s} {'':>9s} {'':>8s} "
              f"{r['peak_rss_mb']:11.0f} {0:14.0f}", flush=True)
        return
    above = r["peak_rss_mb"] - _baseline(r["config"], results)
    stages = json.dumps(r.get("stages_s", {}))
    print(f"{r['config']:16s} {r['windows']:7d} {r['wall_s']:8.1f} {r['forward_s']:9.1f} "
          f"{r['wall_s'] / r['forward_s']:8.3f} {r['peak_rss_mb']:11.0f} {above:14.0f}  {stages}",
          flush=True)


def _agreement(tmp: Path, results: dict[str, dict[str, Any]]) -> None:
    # Not MONAI vs medseg: their window grids differ (MONAI flushes its last window against
    # the border, medseg centres a regular grid), and with random weights and instance norm the
    # labels hinge on window placement. Equality on the same grid is a unit test
    # (tests/inference/test_sliding_window.py::test_equals_monai_on_reflection_padded_image).
    pairs = [("medseg-fp32-m0", "medseg-bf16-m0"), ("monai-fp32", "monai-bf16")]
    for a, b in pairs:
        if a in results and b in results:
            la, lb = np.load(tmp / f"{a}.npy"), np.load(tmp / f"{b}.npy")
            print(f"# label agreement {a} vs {b}: {(la == lb).mean() * 100:.3f}% of voxels")


def _verdict(results: dict[str, dict[str, Any]], shape: tuple[int, ...]) -> None:
    def ratio(a: str, b: str, key: str) -> str:
        if a in results and b in results:
            return f"{results[a][key] / results[b][key]:.2f}"
        return "n/a"

    print(f"# time medseg-fp32-m0 / monai-fp32: {ratio('medseg-fp32-m0', 'monai-fp32', 'wall_s')}"
          f"; medseg-bf16-m0 / monai-bf16: {ratio('medseg-bf16-m0', 'monai-bf16', 'wall_s')}"
          f"; medseg-e2e / monai-fp32: {ratio('medseg-e2e', 'monai-fp32', 'wall_s')}")
    print(f"# peak RSS medseg-fp32-m0 / monai-fp32: "
          f"{ratio('medseg-fp32-m0', 'monai-fp32', 'peak_rss_mb')}; medseg-bf16-m0 / "
          f"monai-bf16: {ratio('medseg-bf16-m0', 'monai-bf16', 'peak_rss_mb')}; medseg-e2e / "
          f"monai-fp32: {ratio('medseg-e2e', 'monai-fp32', 'peak_rss_mb')}; medseg-e2e / "
          f"monai-fp32-mmap: {ratio('medseg-e2e', 'monai-fp32-mmap', 'peak_rss_mb')}")
    print(f"# low-memory mode: time medseg-bf16-m0-lowmem / monai-bf16: "
          f"{ratio('medseg-bf16-m0-lowmem', 'monai-bf16', 'wall_s')}, peak RSS "
          f"{ratio('medseg-bf16-m0-lowmem', 'monai-bf16', 'peak_rss_mb')}; medseg-e2e-lowmem / "
          f"monai-fp32: time {ratio('medseg-e2e-lowmem', 'monai-fp32', 'wall_s')}, peak RSS "
          f"{ratio('medseg-e2e-lowmem', 'monai-fp32', 'peak_rss_mb')}")
    labels_mb = float(np.prod(shape)) / 2**20  # the uint8 label map
    for floor, monai in (("floor-fp32", "monai-fp32"), ("floor-bf16", "monai-bf16")):
        if floor in results:
            for what, mb in (("uint8", labels_mb), ("2-bit packed", labels_mb / 4)):
                least = results[floor]["peak_rss_mb"] + mb
                vs = (f" = {least / results[monai]['peak_rss_mb']:.2f} of {monai}'s peak"
                      if monai in results else "")
                print(f"# least whole-process peak with the volume and its labels ({what}) in "
                      f"memory ({floor} + {mb:.0f} MB): {least:.0f} MB{vs}")
    for a, b in (("medseg-fp32-m0", "monai-fp32"), ("medseg-bf16-m0", "monai-bf16"),
                 ("medseg-e2e", "monai-fp32"), ("medseg-e2e", "monai-fp32-mmap")):
        if a in results and b in results:
            ours = results[a]["peak_rss_mb"] - _baseline(a, results)
            theirs = results[b]["peak_rss_mb"] - _baseline(b, results)
            print(f"# memory above own baseline {a} / {b}: {ours / theirs:.2f}")


def cpu_name() -> str:
    """CPU model and core count, for result headers."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return "unknown"


if __name__ == "__main__":
    main()
