"""Training throughput: the real data pipeline vs the same loop on pre-loaded tensors.

The real pipeline is what ``medseg-train`` runs per iteration: draw cases, crop reflect-padded
patches (foreground-aware), batched augmentation, then forward/backward/step. The baseline runs
the identical step on one batch prepared in advance (no sampling, no augmentation). Blocks of
the two are interleaved so that load from other processes on a shared machine hits both alike.

Usage (repository root):
    .venv/bin/python benchmarks/train_throughput.py --config workflows/hippocampus.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch

from medseg.networks.factory import build_network
from medseg.training import load_config
from medseg.training.loop import _make_loss, prepare_data, training_batch
from medseg.training.patches import PatchSampler, case_weights
from medseg.training.runtime import pick_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="workflows/hippocampus.yaml")
    parser.add_argument("--iterations", type=int, default=10, help="iterations per block")
    parser.add_argument("--blocks", type=int, default=3, help="interleaved blocks per variant")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    runtime = pick_runtime(device=cfg.device, amp=cfg.amp)
    t0 = time.perf_counter()
    data = prepare_data(cfg, runtime)
    load_s = time.perf_counter() - t0
    plan = data.plan
    g = torch.Generator().manual_seed(0)
    weights = case_weights(data.train_cases, cfg.case_sampling)
    sampler = PatchSampler(data.train_cases, plan.patch_size, foreground_prob=cfg.foreground_prob,
                           generator=g, weights=weights)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Sample, then augment and make targets exactly as the training step does."""
        return training_batch(*sampler.next_batch(plan.batch_size), cfg, g)

    model = build_network(plan.network).to(runtime.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    loss_fn = _make_loss(plan, cfg.loss)
    fixed = next_batch()

    def step(image: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None) -> None:
        ctx = torch.autocast(runtime.device.type, dtype=runtime.amp_dtype) \
            if runtime.amp_dtype else contextlib.nullcontext()
        with ctx:
            out = model(image.to(runtime.device))
        loss = loss_fn(out, label.to(runtime.device),
                       weight.to(runtime.device) if weight is not None else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    data_s = 0.0
    totals = {"pipeline": 0.0, "preloaded": 0.0}
    for _ in range(2):  # warm-up (oneDNN primitive creation)
        step(*fixed)
    for _ in range(args.blocks):
        for variant in ("pipeline", "preloaded"):
            t = time.perf_counter()
            for _ in range(args.iterations):
                if variant == "pipeline":
                    d = time.perf_counter()
                    batch = next_batch()
                    data_s += time.perf_counter() - d
                else:
                    batch = fixed
                step(*batch)
            totals[variant] += time.perf_counter() - t
    n = args.iterations * args.blocks
    ips = {k: n / v for k, v in totals.items()}
    overhead = 1.0 - ips["pipeline"] / ips["preloaded"]
    print(f"config {args.config}: patch {plan.patch_size}, batch {plan.batch_size}, "
          f"filters {plan.network.filters}, amp {runtime.amp_dtype}, threads {args.threads}, "
          f"device {runtime.device}")
    print(f"cases loaded and preprocessed once: {len(data.train_cases)} train + "
          f"{len(data.val_cases)} val in {load_s:.1f} s")
    print(f"real pipeline : {ips['pipeline']:.3f} it/s  ({ips['pipeline'] * plan.batch_size:.2f} "
          "samples/s)")
    print(f"pre-loaded    : {ips['preloaded']:.3f} it/s  ({ips['preloaded'] * plan.batch_size:.2f} "
          "samples/s)")
    print(f"sampling + augmentation: {1000 * data_s / n:.1f} ms per batch "
          f"({100 * data_s / totals['pipeline']:.1f}% of pipeline time)")
    print(f"pipeline cost vs pre-loaded: {100 * overhead:+.1f}% (target <= 10%)")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} (1 min) on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
