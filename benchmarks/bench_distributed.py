"""Batch inference throughput: the local runner vs Ray with 1 and 2 workers on this machine.

Cases are MSD Hippocampus MR volumes (``../shared/data/msd_hippocampus/imagesTr``, about
35x50x36 voxels each). The model is a random-weight DynUNet with the architecture the
hippocampus workflow plans (window 40x56x40, filters 16..128, 3 classes), or ``--model``.
Every variant runs the real per-case pipeline (read, preprocess, windowed forward pass,
resample, write NIfTI + JSON record).

Variants, with the machine's 2 cores split the same way each time:

* ``local 1x2``: :func:`run_batch` in this process, 2 torch threads (no Ray);
* ``local 1x1``: the same with 1 thread (a reference: on a shared, loaded 2-core machine a
  second thread can cost more than it gains);
* ``ray 1x2``: one Ray actor with 2 threads;
* ``ray 2x1``: two Ray actors with 1 thread each.

Each variant first runs cold (Ray actors start and load the model; :attr:`RayRunner.startup_s`
measures that part), then ``--repeats`` warm runs (``overwrite=True``, actors kept) interleaved
with the other variants, so load from other processes on a shared machine hits all alike. The Ray
instance is local, on loopback, and offers 4 logical CPUs so that the idle actors of both Ray
variants can stay alive between interleaved runs (only one variant computes at a time; the
threads are set explicitly per actor).

Usage (repository root)::

    .venv/bin/python benchmarks/bench_distributed.py --cases 24 --repeats 3 \
        | tee benchmarks/results/distributed.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from medseg.distributed.ray_backend import RayRunner, start_local_ray
from medseg.inference.batch import run_batch
from medseg.inference.cases import CaseInput, discover_cases

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msd_hippocampus"
WORKER_NICENESS = 15
STAGES = ("read", "preprocess", "infer", "resample", "write", "total")


def hippocampus_like_model(path: Path) -> Path:
    """A random-weight model with the hippocampus workflow's planned architecture."""
    from medseg.model_card import ModelCard, NormalizationConfig, save_model
    from medseg.networks import build_network, plan_network

    torch.manual_seed(0)
    config = plan_network(spatial_dims=3, in_channels=1, out_channels=3,
                          patch_size=[40, 56, 40], base_filters=16, deep_supervision=True)
    card = ModelCard(name="hippocampus-random", network=config,
                     label_names={0: "background", 1: "anterior", 2: "posterior"},
                     roi_size=[40, 56, 40], target_spacing=[1.0, 1.0, 1.0],
                     normalization=NormalizationConfig(scheme="zscore"))
    return save_model(path, build_network(config), card)


def run_once(cases: list[CaseInput], model: Path, name: str, runner: Any, work: Path,
             overwrite: bool) -> tuple[float, dict[str, float]]:
    """Wall seconds of one batch and the mean per-case stage timings."""
    out = work / name.replace(" ", "_")
    torch.set_num_threads(int(name[-1]))  # local variants; Ray actors set their own
    t0 = time.perf_counter()
    summary = run_batch(cases, model, out, overwrite=overwrite, runner=runner)
    wall = time.perf_counter() - t0
    if summary.failed or summary.completed != len(cases):
        raise RuntimeError(f"benchmark batch failed: {summary.failed}")
    stages = {s: statistics.mean(r.timings_s.get(s, 0.0) for r in summary.records)
              for s in STAGES}
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per variant")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: random "
                        "weights, hippocampus architecture)")
    args = parser.parse_args()
    # Ray starts its workers at niceness 15 (its default worker_niceness). On a machine shared
    # with other jobs that alone makes actors slower than a process at niceness 0, so the local
    # variants run at the same niceness as the actors.
    os.nice(max(WORKER_NICENESS - os.nice(0), 0))
    work = Path(tempfile.mkdtemp(prefix="medseg-bench-distributed-"))
    model = args.model or hippocampus_like_model(work / "model.safetensors")
    cases = discover_cases([DATA / "imagesTr"])[: args.cases]
    print(f"# {len(cases)} MSD Hippocampus cases, model {model.name}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(f"# load average at start: {os.getloadavg()}; this process at niceness {os.nice(0)}")

    t0 = time.perf_counter()
    start_local_ray(num_cpus=4)
    ray_start = time.perf_counter() - t0
    import ray

    print(f"# ray {ray.__version__} local instance started in {ray_start:.1f} s "
          f"({ray.get_runtime_context().gcs_address})")

    variants: dict[str, Any] = {
        "local 1x2": None,
        "local 1x1": None,
        "ray 1x2": RayRunner(workers=1, threads_per_worker=2),
        "ray 2x1": RayRunner(workers=2, threads_per_worker=1),
    }
    cold: dict[str, float] = {}
    actors_s: dict[str, float] = {}
    warm: dict[str, list[float]] = {name: [] for name in variants}
    stages: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for name, runner in variants.items():
        cold[name], _ = run_once(cases, model, name, runner, work, False)
        actors_s[name] = runner.startup_s if runner is not None else 0.0
        print(f"# cold {name}: {cold[name]:.1f} s (actor start-up {actors_s[name]:.1f} s)",
              flush=True)
    for rep in range(args.repeats):
        for name, runner in variants.items():
            wall, st = run_once(cases, model, name, runner, work, True)
            warm[name].append(wall)
            stages[name].append(st)
            print(f"# warm {rep + 1} {name}: {wall:.1f} s", flush=True)
    for runner in variants.values():
        if runner is not None:
            runner.close()
    ray.shutdown()

    n = len(cases)
    base = statistics.median(warm["local 1x2"])
    print()
    print("variant     warm s (median, min-max)  cases/min warm  speed-up vs local  "
          "start-up s (ray + actors)  cases/min incl. start-up")
    for name in variants:
        w = statistics.median(warm[name])
        startup = actors_s[name] + (ray_start if name.startswith("ray") else 0.0)
        spread = f"{w:.1f} ({min(warm[name]):.1f}-{max(warm[name]):.1f})"
        print(f"{name:<11} {spread:>25}  {n / w * 60:14.1f}  {base / w:17.2f}  "
              f"{startup:25.1f}  {n / (w + startup) * 60:24.1f}")
    print()
    print("mean seconds per case by stage (warm runs; per worker, so 2x1 cases overlap):")
    print("variant      " + "  ".join(f"{s:>10}" for s in STAGES))
    for name in variants:
        mean = {s: statistics.mean(st[s] for st in stages[name]) for s in STAGES}
        print(f"{name:<11}  " + "  ".join(f"{mean[s]:10.3f}" for s in STAGES))
    print()
    print(f"start-up = Ray instance start ({ray_start:.1f} s, shared by both Ray variants, "
          "counted in each) + actor start (processes, imports, model load, measured by "
          "RayRunner.startup_s).")
    print(f"# load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
