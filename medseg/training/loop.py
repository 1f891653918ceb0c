"""The training loop: data -> fingerprint -> plan -> patches -> network -> checkpoints.

:func:`train` is the one entry point (the CLI and the workflows call it). It is ready for
distributed runs: no global state, every random draw from a per-rank generator, only rank 0
logs and writes, and the model can be wrapped (``wrap_model``, e.g. DDP) from outside.
"""

from __future__ import annotations

import contextlib
import copy
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
from medseg.training.patches import PatchSampler, case_weights
from medseg.training.plan import (
    Fingerprint,
    TrainingPlan,
    compute_fingerprint,
    plan_from_card,
    resolve_plan,
)
from medseg.training.records import MetricsLog, build_card, fold_of_cases, split_cases
from medseg.training.runtime import Runtime, pick_runtime, seed_everything
from medseg.training.sources import group_of_cases, index_data
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
    index = index_data(dc)
    pairs = index.pairs[: dc.max_cases] if dc.max_cases else index.pairs
    ids = [p.case_id for p in pairs]
    groups = group_of_cases(dc.group_file, dc.group_column, ids) if dc.group_file else None
    val_cases = dc.val_cases
    if dc.folds is not None:
        fold = fold_of_cases(ids, folds=dc.folds, seed=config.seed, groups=groups)
        val_cases = [i for i in ids if fold[i] == dc.fold]
    train_ids, val_ids = split_cases(ids, val_cases=val_cases, val_fraction=dc.val_fraction,
                                     seed=config.seed, groups=groups)
    names = dc.label_names or index.label_names
    instances = dc.instance_targets is not None
    load = {"label_values": dc.label_values, "channels": dc.channels,
            "channel_rule": dc.channel_rule,
            "num_classes": len(names) if names and not instances else None}
    if dc.stream:  # one case in memory at a time; prepared cases wait on disk
        from medseg.training.case_store import prepare_streamed

        fp, plan, train, val, domain = prepare_streamed(
            pairs, train_ids, val_ids, folder=Path(config.output_dir) / f"cases-{runtime.rank}",
            load=load, plan_of=lambda f: _plan(config, f, names, runtime),
            modality=dc.modality or index.modality, label_names=names, seed=config.seed,
            instances=instances, fov_pixels=config.fov_pixels)
        return PreparedRun(plan, fp, train, val,  # type: ignore[arg-type]
                           {"train": train_ids, "val": val_ids}, domain)
    raw = load_raw_cases(pairs, **load)
    by_id = {c.case_id: c for c in raw}
    fp = compute_fingerprint([by_id[i] for i in train_ids], modality=dc.modality or index.modality,
                             seed=config.seed, instances=instances)
    plan = _plan(config, fp, names, runtime)

    def prep(ids: list[str]) -> list[PreparedCase]:
        return [prepare_case(by_id[i], normalization=plan.normalization,
                             target_spacing=plan.target_spacing, num_classes=plan.num_classes,
                             seed=config.seed, instances=instances,
                             fov_pixels=config.fov_pixels,
                             context_slices=plan.context_slices) for i in ids]

    domain = compute_domain([by_id[i] for i in train_ids], label_names=dict(plan.label_names),
                            normalization=plan.normalization, modality=plan.modality,
                            instances=instances)
    return PreparedRun(plan, fp, prep(train_ids), prep(val_ids),
                       {"train": train_ids, "val": val_ids}, domain)


def _plan(config: TrainConfig, fp: Fingerprint, names: dict[int, str] | None,
          runtime: Runtime) -> TrainingPlan:
    """The run's plan: from the data, or from the starting model's card (``init_from``)."""
    memory_gb = (torch.cuda.get_device_properties(runtime.device).total_memory / 2**30
                 if runtime.device.type == "cuda" else None)
    if config.init_from:
        from medseg.model_card import read_model_card

        return plan_from_card(read_model_card(config.init_from), config, fp,
                              device_type=runtime.device.type, memory_gb=memory_gb)
    return resolve_plan(config, fp, label_names=names, device_type=runtime.device.type,
                        memory_gb=memory_gb)


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
    should_stop: Callable[[], bool] | None = None,
    on_validation: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a segmentation network as ``config`` says; checkpoints go to ``output_dir``.

    The run goes through phases, each a method of :class:`_Run`: set-up (data, plan, network,
    optimiser), resume, then iterations of ``step`` with ``validate`` and ``checkpoint`` at
    epoch ends, and a last validation and checkpoint. Every exchange with other ranks goes
    through one :class:`~medseg.distributed.ddp.Collectives` object.

    Args:
        config: The run's configuration (``None`` fields are planned from the data).
        resume: Continue from ``output_dir/last`` (weights, optimiser, schedule, RNG, history).
        stop_after_iterations: Stop (and checkpoint) after this many iterations in this call,
            as an interruption would; a later ``resume=True`` call continues identically.
        progress: ``progress(done, total)`` after every iteration (total = planned iterations).
        wrap_model: Optional wrapper applied after the model is on its device (e.g. DDP).
        should_stop: Asked before every iteration; ``True`` ends the run as the time budget
            would (a last validation and checkpoint; the best so far is kept).
        on_validation: Called with each validation record (``iteration``, ``elapsed_s``,
            ``val_mean``, ``val_dice``) on rank 0.

    Returns:
        Where the checkpoints are and the best validation metrics.
    """
    run = _Run.set_up(config, resume=resume)
    run.on_validation = on_validation
    if resume:
        run.resume()
    run.net = wrap_model(run.model) if wrap_model else run.group.wrap(run.model)
    total_iters = config.epochs * config.iters_per_epoch
    epoch_loss, epoch_n, stop_reason, this_call = 0.0, 0, "epochs", 0
    while run.iteration < total_iters:
        clock = run.agreed_clock()
        if run.out_of_time(clock):
            stop_reason = "time budget"
            break
        if stop_after_iterations is not None and this_call >= stop_after_iterations:
            stop_reason = "stop_after_iterations"
            break
        if should_stop is not None and should_stop():
            stop_reason = "stopped by the caller"
            break
        loss, lr = run.step(total_iters, clock[0])
        this_call += 1
        epoch_loss += loss
        epoch_n += 1
        if progress is not None:
            progress(run.iteration, total_iters)
        if run.iteration % config.iters_per_epoch == 0:
            epoch = run.iteration // config.iters_per_epoch
            if run.log:
                run.log.train(run.iteration, epoch, run.elapsed(), lr,
                              epoch_loss / max(epoch_n, 1))
            epoch_loss, epoch_n = 0.0, 0
            if epoch % config.val_every == 0:
                run.validate()
            run.checkpoint("last")
    validated_now = bool(run.history) and run.history[-1]["iteration"] == run.iteration
    if not validated_now and stop_reason != "stop_after_iterations":
        run.validate()
    run.checkpoint("last")
    return run.finish(stop_reason)


class _Run:
    """One training run's live state and its phases (see :func:`train`)."""

    def __init__(self, config: TrainConfig, runtime: Runtime, group: ddp.Collectives,
                 data: PreparedRun, *, resume: bool, start: float) -> None:
        from medseg.networks.factory import build_network

        self.config, self.runtime, self.group, self.data = config, runtime, group, data
        self.plan = data.plan
        self.run_dir = Path(config.output_dir)
        self.start = start
        self.model = build_network(self.plan.network).to(runtime.device)
        if config.init_from:
            from safetensors.torch import load_model as load_safetensors_model

            load_safetensors_model(self.model, str(config.init_from), strict=True,
                                   device=str(runtime.device))
            logger.info("weights from %s", config.init_from)
        self.on_validation: Callable[[dict[str, Any]], None] | None = None
        self.net = self.model
        #: The moving average of the weights (``config.ema_decay``): what is validated, saved
        #: and exported; ``None``: the weights themselves.
        self.ema = _frozen_copy(self.model) if config.ema_decay else None
        self.optimizer = _make_optimizer(config, self.model)
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + runtime.rank)
        self.iteration, self.elapsed_before = 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.val_cost = 0.0
        self.loss_fn = _make_loss(self.plan, config.loss)
        weights = case_weights(data.train_cases, config.case_sampling)
        self.sampler = PatchSampler(data.train_cases, self.plan.patch_size,
                                    foreground_prob=config.foreground_prob,
                                    generator=self.generator, weights=weights)
        self.stream = group.case_stream(len(data.train_cases), batch_size=self.plan.batch_size,
                                        seed=config.seed, weights=weights)
        self.scaler = (torch.amp.GradScaler("cuda") if runtime.amp_dtype == torch.float16
                       else None)
        self.budget_s = config.time_budget_min * 60.0 if config.time_budget_min else None
        self.log = (MetricsLog(self.run_dir, self.plan.label_names, append=resume)
                    if runtime.is_main else None)

    # -- set-up and resume ----------------------------------------------------------------
    @classmethod
    def set_up(cls, config: TrainConfig, *, resume: bool) -> _Run:
        """Runtime, process group, data and plan; rank 0 writes the run folder's config and
        plan; the network, optimiser, sampler and logs."""
        start = time.monotonic()
        runtime = pick_runtime(device=config.device, amp=config.amp)
        ddp.init_from_env(runtime.device)  # under torchrun: join the process group
        group = ddp.Collectives()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        seed_everything(config.seed + runtime.rank)
        run_dir = Path(config.output_dir)
        data = prepare_data(config, runtime)
        if not data.val_cases:
            if config.data.val_fraction > 0 or config.data.val_cases:
                raise DatasetError(f"{config.data.path}: no validation cases (set "
                                   "data.val_cases or data.val_fraction > 0)")
            logger.info("data.val_fraction 0: training on all %d cases without validation; "
                        "the last checkpoint is the model", len(data.train_cases))
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run_dir / "config.json")
            (run_dir / "plan.json").write_text(_json({"plan": data.plan.to_dict(),
                                                      "fingerprint": data.fingerprint.to_dict(),
                                                      "split": data.split}))
            logger.info("resolved plan: %s", _json(data.plan.to_dict()))
        group.barrier()  # rank 0 has created the run folder before anyone resumes from it
        return cls(config, runtime, group, data, resume=resume, start=start)

    def resume(self) -> None:
        """Weights, optimiser, this rank's random stream, clock and history from ``last``."""
        from safetensors.torch import load_model as load_safetensors_model

        state = load_state(self.run_dir, "last")
        if state.get("split") != self.data.split:
            raise ConfigError(f"{self.run_dir}: cannot resume, the train/validation split "
                              "differs from the checkpoint's (dataset or seed changed)")
        weights, _ = checkpoint_paths(self.run_dir, "last")
        device = str(next(self.model.parameters()).device)
        load_safetensors_model(self.kept_model, str(weights), strict=True, device=device)
        if self.ema is not None:
            if "raw_weights" not in state:
                raise ConfigError(f"{self.run_dir}: cannot resume with ema_decay, the "
                                  "checkpoint was saved without a moving average")
            self.model.load_state_dict(state["raw_weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(self.group.generator_state(state, seed=self.config.seed))
        logger.info("resumed from %s at iteration %d", weights, state["iteration"])
        self.iteration, self.elapsed_before = int(state["iteration"]), float(state["elapsed_s"])
        self.history, self.best = list(state["history"]), state["best"]

    # -- the loop's phases ----------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.start

    def agreed_clock(self) -> tuple[float, float]:
        """Rank 0's elapsed time and last validation cost (one broadcast per iteration: the
        ranks agree on stopping and on the learning rate); zeros without a time budget."""
        if self.budget_s is None:
            return 0.0, 0.0
        clock, val_cost = self.group.from_main(self.elapsed(), self.val_cost)
        return clock, val_cost

    def out_of_time(self, agreed: tuple[float, float]) -> bool:
        """Would the next iteration, and a validation, overrun the time budget?"""
        clock, val_cost = agreed
        return self.budget_s is not None and clock + 1.2 * val_cost + 2.0 >= self.budget_s

    def step(self, total_iters: int, clock: float) -> tuple[float, float]:
        """One optimisation step at the agreed ``clock`` (the schedule follows the time
        budget when there is one); returns ``(loss, learning rate)``."""
        config, runtime = self.config, self.runtime
        progress_frac = self.iteration / total_iters
        if self.budget_s is not None:
            progress_frac = max(progress_frac, clock / self.budget_s)
        lr = _lr_at(config, progress_frac, self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        image, label = (self.sampler.sample(self.stream.batch(self.iteration)) if self.stream
                        else self.sampler.next_batch(self.plan.batch_size))
        image, label, weight = training_batch(image, label, config, self.generator)
        image, label = image.to(runtime.device), label.to(runtime.device)
        weight = weight.to(runtime.device) if weight is not None else None
        autocast = torch.autocast(runtime.device.type, dtype=runtime.amp_dtype) \
            if runtime.amp_dtype else contextlib.nullcontext()
        with autocast:
            out = self.net(image)
        loss = self.loss_fn(out, label, weight)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
            self.optimizer.step()
        if self.ema is not None:
            update_average(self.ema, self.model, ema_decay_at(config.ema_decay, self.iteration))
        self.iteration += 1
        return float(loss.detach()), lr

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the moving average when there is one."""
        return self.ema if self.ema is not None else self.model

    def validate(self) -> None:
        """Validation Dice over the held-out cases (sharded over the ranks); a new best is
        checkpointed as ``best``. Nothing to do without validation cases (``val_fraction``
        0: every case trains, the last checkpoint is the model)."""
        if not self.data.val_cases:
            return
        config, plan = self.config, self.plan
        t0 = time.monotonic()
        result = self.group.validate(validate, self.kept_model, self.data.val_cases,
                                     num_classes=plan.num_classes,
                                     roi_size=plan.patch_size, overlap=config.val_overlap,
                                     device=self.runtime.device,
                                     amp_dtype=self.runtime.amp_dtype, tta=config.val_tta,
                                     label_offset=config.augment.label_offset,
                                     instance_targets=config.data.instance_targets)
        self.val_cost = time.monotonic() - t0
        record = {"iteration": self.iteration, "epoch": self.iteration / config.iters_per_epoch,
                  "elapsed_s": round(self.elapsed(), 1), "val_mean": result["mean"],
                  "val_dice": {str(k): v for k, v in result["mean_dice"].items()}}
        self.history.append(record)
        if self.runtime.is_main:
            logger.info("iteration %d (%.0f s): validation Dice %s, mean %.4f", self.iteration,
                        self.elapsed(), {plan.label_names[k]: round(v, 4)
                                         for k, v in result["mean_dice"].items()},
                        result["mean"])
            if self.log:
                self.log.validation(record, result["mean_dice"])
            if self.on_validation is not None:
                self.on_validation(record)
        if self.best is None or result["mean"] > self.best["val_mean"]:
            self.best = record
            self.checkpoint("best")

    def checkpoint(self, tag: str) -> None:
        """Weights, model card and resumable state as ``tag`` (rank 0 writes; every rank
        takes part in gathering the random streams)."""
        rank_generators = self.group.gather(self.generator.get_state())  # collective
        if not self.runtime.is_main:
            return
        card = build_card(self.config, self.plan, self.data, history=self.history,
                          best=self.best, runtime=self.runtime, iteration=self.iteration,
                          elapsed_s=self.elapsed())
        state = {"iteration": self.iteration, "elapsed_s": self.elapsed(),
                 "optimizer": self.optimizer.state_dict(),
                 "generator": self.generator.get_state(), "rank_generators": rank_generators,
                 "history": self.history, "best": self.best, "split": self.data.split}
        if self.ema is not None:  # the file holds the average; resuming needs the weights too
            state["raw_weights"] = {k: v.detach().cpu() for k, v in
                                    self.model.state_dict().items()}
        save_checkpoint(self.run_dir, tag, self.kept_model, card, state)

    def finish(self, stop_reason: str) -> TrainResult:
        """Close the logs and wait for rank 0's checkpoints; the run's result."""
        if self.runtime.is_main:
            logger.info("stopped after %d iterations (%s), %.0f s; best %s", self.iteration,
                        stop_reason, self.elapsed(), self.best)
            if self.log:
                self.log.close()
        self.group.barrier()  # rank 0's checkpoints are complete before any rank returns
        weights_last, _ = checkpoint_paths(self.run_dir, "last")
        weights_best = (checkpoint_paths(self.run_dir, "best")[0] if self.best is not None
                        else weights_last)
        return TrainResult(self.run_dir, weights_best, weights_last, self.best or {},
                           self.iteration, self.elapsed(), self.plan)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def ema_decay_at(decay: float, iteration: int) -> float:
    """The moving average's decay at ``iteration``: ``decay``, with a shorter memory at the
    start so the first steps away from the initial weights are not averaged away.

    Examples:
        >>> ema_decay_at(0.99, 0), round(ema_decay_at(0.99, 90), 3), ema_decay_at(0.99, 5000)
        (0.1, 0.91, 0.99)
    """
    return min(decay, (1 + iteration) / (10 + iteration))


@torch.no_grad()
def update_average(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * model`` for every floating-point
    parameter and buffer (other buffers are copied)."""
    avg = average.state_dict()
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            avg[name].lerp_(value, 1.0 - decay)
        else:
            avg[name].copy_(value)


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


def training_batch(image: torch.Tensor, label: torch.Tensor, config: TrainConfig,
                   generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A sampled batch as the optimisation step takes it: augmented (``config.augment``), then
    its targets and optional loss weights made (:func:`make_targets`). Returns ``(image,
    target, weight)``."""
    image, label = augment_batch(image, label, config.augment, generator)
    return (image, *make_targets(label, config))


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


def _json(d: Any) -> str:
    import json

    return json.dumps(d, indent=2, sort_keys=True, default=str)
