"""The training loop: data -> fingerprint -> plan -> patches -> network -> checkpoints.

:func:`train` is the one entry point (the CLI and the workflows call it). It is ready for
distributed runs: no global state, every random draw from a per-rank generator, only rank 0
logs and writes, and the model can be wrapped (``wrap_model``, e.g. DDP) from outside.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.distributed import ddp
from medseg.errors import ConfigError, DatasetError
from medseg.training.augment import augment_batch
from medseg.training.checkpoint import checkpoint_paths, load_state, save_checkpoint
from medseg.training.config import TrainConfig, save_config
from medseg.training.dataset import PreparedCase, load_raw_cases, prepare_case
from medseg.training.domain import compute_domain
from medseg.training.patches import PatchSampler
from medseg.training.plan import Fingerprint, TrainingPlan, compute_fingerprint, resolve_plan
from medseg.training.records import MetricsLog, build_card, split_cases
from medseg.training.runtime import Runtime, pick_runtime, seed_everything
from medseg.training.sources import group_of_cases, index_dataset
from medseg.training.validate import validate

logger = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """Everything derived from the data before the first iteration."""

    plan: TrainingPlan
    fingerprint: Fingerprint
    train_cases: list[PreparedCase]
    val_cases: list[PreparedCase]
    split: dict[str, list[str]]
    domain: dict[str, Any] | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    run_dir: Path
    best_path: Path
    last_path: Path
    best_metrics: dict[str, Any]
    iterations: int
    elapsed_s: float
    plan: TrainingPlan


def prepare_data(config: TrainConfig, runtime: Runtime) -> PreparedRun:
    """Index, split, load, validate, fingerprint (training cases only), plan and preprocess."""
    dc = config.data
    index = index_dataset(dc.source, dc.path, image_dir=dc.image_dir, label_dir=dc.label_dir,
                          label_suffix=dc.label_suffix)
    pairs = index.pairs[: dc.max_cases] if dc.max_cases else index.pairs
    ids = [p.case_id for p in pairs]
    groups = group_of_cases(dc.group_file, dc.group_column, ids) if dc.group_file else None
    train_ids, val_ids = split_cases(ids, val_cases=dc.val_cases, val_fraction=dc.val_fraction,
                                     seed=config.seed, groups=groups)
    names = dc.label_names or index.label_names
    instances = dc.instance_targets is not None
    raw = load_raw_cases(pairs, label_values=dc.label_values,
                         num_classes=len(names) if names and not instances else None,
                         channels=dc.channels)
    by_id = {c.case_id: c for c in raw}
    fp = compute_fingerprint([by_id[i] for i in train_ids], modality=dc.modality or index.modality,
                             seed=config.seed, instances=instances)
    memory_gb = (torch.cuda.get_device_properties(runtime.device).total_memory / 2**30
                 if runtime.device.type == "cuda" else None)
    plan = resolve_plan(config, fp, label_names=names, device_type=runtime.device.type,
                        memory_gb=memory_gb)

    def prep(ids: list[str]) -> list[PreparedCase]:
        return [prepare_case(by_id[i], normalization=plan.normalization,
                             target_spacing=plan.target_spacing, num_classes=plan.num_classes,
                             seed=config.seed, instances=instances) for i in ids]

    domain = compute_domain([by_id[i] for i in train_ids], label_names=dict(plan.label_names),
                            normalization=plan.normalization, modality=plan.modality,
                            instances=instances)
    return PreparedRun(plan, fp, prep(train_ids), prep(val_ids),
                       {"train": train_ids, "val": val_ids}, domain)


def _lr_at(config: TrainConfig, progress: float, iteration: int) -> float:
    if iteration < config.warmup_iters:
        return config.lr * (iteration + 1) / config.warmup_iters
    p = min(max(progress, 0.0), 1.0)
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return config.lr * (1.0 - p) ** 0.9


def _make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               nesterov=True, weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_after_iterations: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> TrainResult:
    """Train a segmentation network as ``config`` says; checkpoints go to ``output_dir``.

    Args:
        config: The run's configuration (``None`` fields are planned from the data).
        resume: Continue from ``output_dir/last`` (weights, optimiser, schedule, RNG, history).
        stop_after_iterations: Stop (and checkpoint) after this many iterations in this call,
            as an interruption would; a later ``resume=True`` call continues identically.
        progress: ``progress(done, total)`` after every iteration (total = planned iterations).
        wrap_model: Optional wrapper applied after the model is on its device (e.g. DDP).

    Returns:
        Where the checkpoints are and the best validation metrics.
    """
    start = time.monotonic()
    runtime = pick_runtime(device=config.device, amp=config.amp)
    ddp.init_from_env(runtime.device)  # under torchrun: join the process group
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(config.seed + runtime.rank)
    run_dir = Path(config.output_dir)
    data = prepare_data(config, runtime)
    if not data.val_cases:
        raise DatasetError(f"{config.data.path}: no validation cases (set data.val_cases or "
                           "data.val_fraction > 0)")
    plan = data.plan
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.json")
        (run_dir / "plan.json").write_text(_json({"plan": plan.to_dict(),
                                                  "fingerprint": data.fingerprint.to_dict(),
                                                  "split": data.split}))
        logger.info("resolved plan: %s", _json(plan.to_dict()))
    ddp.barrier()  # rank 0 has created the run folder before anyone resumes from it

    from medseg.networks.factory import build_network

    model = build_network(plan.network).to(runtime.device)
    optimizer = _make_optimizer(config, model)
    generator = torch.Generator().manual_seed(config.seed * 1000 + runtime.rank)
    iteration, elapsed_before, history, best = 0, 0.0, [], None
    if resume:
        iteration, elapsed_before, history, best = _restore(run_dir, model, optimizer, generator,
                                                            data.split, seed=config.seed)
    net = wrap_model(model) if wrap_model else ddp.wrap(model)
    loss_fn = _make_loss(plan, config.loss)
    sampler = PatchSampler(data.train_cases, plan.patch_size,
                           foreground_prob=config.foreground_prob, generator=generator)
    stream = ddp.case_stream(len(data.train_cases), batch_size=plan.batch_size, seed=config.seed)
    scaler = torch.amp.GradScaler("cuda") if runtime.amp_dtype == torch.float16 else None
    total_iters = config.epochs * config.iters_per_epoch
    budget_s = config.time_budget_min * 60.0 if config.time_budget_min else None
    log = MetricsLog(run_dir, plan.label_names, append=resume) if runtime.is_main else None
    val_cost = 0.0
    epoch_loss, epoch_n, stop_reason = 0.0, 0, "epochs"
    this_call = 0

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - start

    def checkpoint(tag: str, metrics: dict[str, Any] | None) -> None:
        rank_generators = ddp.gather(generator.get_state())  # collective: all ranks call it
        if not runtime.is_main:
            return
        card = build_card(config, plan, data, history=history, best=best, runtime=runtime,
                          iteration=iteration, elapsed_s=elapsed())
        state = {"iteration": iteration, "elapsed_s": elapsed(),
                 "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                 "rank_generators": rank_generators,
                 "history": history, "best": best, "split": data.split}
        save_checkpoint(run_dir, tag, model, card, state)

    def run_validation() -> None:
        nonlocal best, val_cost
        t0 = time.monotonic()
        result = ddp.validate_sharded(validate, model, data.val_cases,
                                      num_classes=plan.num_classes,
                                      roi_size=plan.patch_size, overlap=config.val_overlap,
                                      device=runtime.device, amp_dtype=runtime.amp_dtype,
                                      tta=config.val_tta,
                                      label_offset=config.augment.label_offset,
                                      instance_targets=config.data.instance_targets)
        val_cost = time.monotonic() - t0
        record = {"iteration": iteration, "epoch": iteration / config.iters_per_epoch,
                  "elapsed_s": round(elapsed(), 1), "val_mean": result["mean"],
                  "val_dice": {str(k): v for k, v in result["mean_dice"].items()}}
        history.append(record)
        if runtime.is_main:
            logger.info("iteration %d (%.0f s): validation Dice %s, mean %.4f", iteration,
                        elapsed(), {plan.label_names[k]: round(v, 4)
                                    for k, v in result["mean_dice"].items()}, result["mean"])
            if log:
                log.validation(record, result["mean_dice"])
        if best is None or result["mean"] > best["val_mean"]:
            best = record
            checkpoint("best", record)

    net.train()
    while iteration < total_iters:
        # Ranks must agree on stopping and on the learning rate: all use rank 0's clock.
        clock, clock_val = ddp.from_main(elapsed(), val_cost) if budget_s is not None \
            else (0.0, 0.0)
        if budget_s is not None and clock + 1.2 * clock_val + 2.0 >= budget_s:
            stop_reason = "time budget"
            break
        if stop_after_iterations is not None and this_call >= stop_after_iterations:
            stop_reason = "stop_after_iterations"
            break
        progress_frac = iteration / total_iters
        if budget_s is not None:
            progress_frac = max(progress_frac, clock / budget_s)
        lr = _lr_at(config, progress_frac, iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        image, label = (sampler.sample(stream.batch(iteration)) if stream
                        else sampler.next_batch(plan.batch_size))
        image, label = augment_batch(image, label, config.augment, generator)
        label, weight = make_targets(label, config)
        image, label = image.to(runtime.device), label.to(runtime.device)
        weight = weight.to(runtime.device) if weight is not None else None
        autocast = torch.autocast(runtime.device.type, dtype=runtime.amp_dtype) \
            if runtime.amp_dtype else contextlib.nullcontext()
        with autocast:
            out = net(image)
        loss = loss_fn(out, label, weight)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            optimizer.step()
        iteration += 1
        this_call += 1
        epoch_loss += float(loss.detach())
        epoch_n += 1
        if progress is not None:
            progress(iteration, total_iters)
        if iteration % config.iters_per_epoch == 0:
            epoch = iteration // config.iters_per_epoch
            if log:
                log.train(iteration, epoch, elapsed(), lr, epoch_loss / max(epoch_n, 1))
            epoch_loss, epoch_n = 0.0, 0
            if epoch % config.val_every == 0:
                run_validation()
            checkpoint("last", None)
    validated_now = bool(history) and history[-1]["iteration"] == iteration
    if not validated_now and stop_reason != "stop_after_iterations":
        run_validation()
    checkpoint("last", None)
    if runtime.is_main:
        logger.info("stopped after %d iterations (%s), %.0f s; best %s", iteration, stop_reason,
                    elapsed(), best)
        if log:
            log.close()
    ddp.barrier()  # rank 0's checkpoints are complete before any rank returns their paths
    weights_best, _ = checkpoint_paths(run_dir, "best")
    weights_last, _ = checkpoint_paths(run_dir, "last")
    return TrainResult(run_dir, weights_best, weights_last, best or {}, iteration, elapsed(), plan)


def make_targets(label: torch.Tensor, config: TrainConfig
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's class targets and optional per-pixel loss weights: instance ids become
    ``data.instance_targets`` classes (after augmentation), with the U-Net weight map when
    ``weight_map`` is on; other labels pass through unweighted."""
    mode = config.data.instance_targets
    if mode is None:
        return label, None
    from medseg.training.instances import batch_weight_maps, instance_targets

    classes = instance_targets(label, mode)
    if not config.weight_map:
        return classes, None
    return classes, batch_weight_maps(label, classes, w0=config.weight_map_w0,
                                      sigma=config.weight_map_sigma)


LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _make_loss(plan: TrainingPlan, kind: str = "dice_ce") -> LossFn:
    """The training loss: ``"dice_ce"`` (Dice over the foreground classes + cross-entropy) or
    ``"ce"``; with deep supervision, summed over the decoder outputs with halving weights.

    Per-pixel ``weight`` ``(B, *S)`` (the U-Net weight map) weights the cross-entropy terms:
    ``mean(weight * ce)``."""
    from monai.losses import DiceCELoss, DiceLoss

    dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=False)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

    def base(out: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None
             ) -> torch.Tensor:
        out = out.float()
        if weight is None:
            if kind == "ce":
                return torch.nn.functional.cross_entropy(out, label[:, 0].long())
            return dice_ce(out, label)
        ce = torch.nn.functional.cross_entropy(out, label[:, 0].long(), reduction="none")
        weighted = (ce * weight).mean()
        return weighted if kind == "ce" else weighted + dice(out, label)

    def loss(out: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None
             ) -> torch.Tensor:
        # DynUNet in training mode stacks (main, deep heads...) on dim 1, all at full size;
        # the heads' losses are summed with halving weights (MONAI DeepSupervisionLoss "exp")
        if plan.network.deep_supervision and out.dim() == label.dim() + 1:
            heads = torch.unbind(out, dim=1)
            return sum(max(0.5**i, 0.0625) * base(o, label, weight)
                       for i, o in enumerate(heads))
        return base(out, label, weight)

    return loss


def _restore(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, split: dict[str, list[str]], *, seed: int = 0
             ) -> tuple[int, float, list[dict[str, Any]], dict[str, Any] | None]:
    from safetensors.torch import load_model as load_safetensors_model

    state = load_state(run_dir, "last")
    if state.get("split") != split:
        raise ConfigError(f"{run_dir}: cannot resume, the train/validation split differs from "
                          "the checkpoint's (dataset or seed changed)")
    weights, _ = checkpoint_paths(run_dir, "last")
    device = str(next(model.parameters()).device)
    load_safetensors_model(model, str(weights), strict=True, device=device)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(ddp.generator_state(state, seed=seed))  # this rank's own stream
    logger.info("resumed from %s at iteration %d", weights, state["iteration"])
    return int(state["iteration"]), float(state["elapsed_s"]), list(state["history"]), \
        state["best"]


def _json(d: Any) -> str:
    import json

    return json.dumps(d, indent=2, sort_keys=True, default=str)
