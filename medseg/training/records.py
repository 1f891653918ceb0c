"""What a run records: the split, the metrics log (CSV + TensorBoard) and the model card."""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import DatasetError
from medseg.model_card import ModelCard, library_versions
from medseg.training.config import INSTANCE_METHOD

if TYPE_CHECKING:
    from medseg.training.config import TrainConfig
    from medseg.training.loop import PreparedRun
    from medseg.training.plan import TrainingPlan
    from medseg.training.runtime import Runtime

logger = logging.getLogger(__name__)

DEFAULT_COLORS = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
                  (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def fold_of_cases(case_ids: Sequence[str], *, folds: int, seed: int,
                  groups: dict[str, str] | None = None) -> dict[str, int]:
    """``{case id: fold}`` for ``folds``-fold cross-validation: groups (each case its own
    group without ``groups``) in a seeded order, dealt to the folds by size, largest first,
    each to the fold with the fewest cases so far, so folds differ by at most one group.

    Examples:
        >>> sorted(fold_of_cases(["a", "b", "c", "d"], folds=2, seed=0).values())
        [0, 0, 1, 1]
    """
    ids = list(case_ids)
    groups = groups or {i: i for i in ids}
    counts = Counter(groups[i] for i in ids)
    if len(counts) < folds:
        raise DatasetError(f"{folds} folds need at least {folds} cases or groups, found "
                           f"{len(counts)}")
    names = sorted(counts)
    order = [names[k] for k in np.random.default_rng(seed).permutation(len(names))]
    order.sort(key=lambda g: -counts[g])  # stable: seeded order among equal sizes
    sizes, fold_of_group = [0] * folds, {}
    for g in order:
        f = min(range(folds), key=lambda j: (sizes[j], j))
        fold_of_group[g] = f
        sizes[f] += counts[g]
    return {i: fold_of_group[groups[i]] for i in ids}


def split_cases(case_ids: Sequence[str], *, val_cases: Sequence[str] | None,
                val_fraction: float, seed: int, groups: dict[str, str] | None = None
                ) -> tuple[list[str], list[str]]:
    """Train/validation split: explicit ``val_cases``, else a seeded random fraction.

    With ``groups`` (``{case id: group}``, e.g. tiles of one microscope field), whole groups
    are drawn in a seeded order until the validation set holds ``val_fraction`` of the cases,
    so no group is split between training and validation.

    Examples:
        >>> split_cases(["a", "b", "c"], val_cases=["b"], val_fraction=0.5, seed=0)
        (['a', 'c'], ['b'])
    """
    ids = list(case_ids)
    if val_cases is not None:
        unknown = sorted(set(val_cases) - set(ids))
        if unknown:
            raise DatasetError(f"validation case(s) {unknown[:5]} are not in the dataset")
        val = [i for i in ids if i in set(val_cases)]
    elif groups is not None:
        counts = Counter(groups[i] for i in ids)
        names = sorted(counts)
        order = np.random.default_rng(seed).permutation(len(names))
        target, chosen = int(round(len(ids) * val_fraction)), set()
        n = 0
        for k in order:
            if n >= target:
                break
            chosen.add(names[k])
            n += counts[names[k]]
        val = sorted(i for i in ids if groups[i] in chosen)
    else:
        n_val = int(round(len(ids) * val_fraction))
        if val_fraction > 0 and len(ids) > 1:
            n_val = min(max(n_val, 1), len(ids) - 1)
        order = np.random.default_rng(seed).permutation(len(ids))
        val = sorted(ids[i] for i in order[:n_val])
    train = [i for i in ids if i not in set(val)]
    if not train:
        raise DatasetError("no training cases left after the validation split")
    return train, val


class MetricsLog:
    """``metrics.csv`` (one row per epoch / validation) plus TensorBoard scalars in ``tb/``."""

    def __init__(self, run_dir: Path, label_names: dict[int, str], *, append: bool) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.label_names = label_names
        self.columns = ["kind", "iteration", "epoch", "elapsed_s", "lr", "train_loss",
                        "val_mean"] + [f"dice_{n}" for k, n in label_names.items() if k != 0]
        if not (append and self.path.exists()):
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer: Any = SummaryWriter(str(Path(run_dir) / "tb"))
        except ImportError:  # tensorboard is a declared dependency; keep going without it
            logger.warning("tensorboard is not installed; metrics go to metrics.csv only")
            self.writer = None

    def _row(self, values: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([values.get(c, "") for c in self.columns])

    def train(self, iteration: int, epoch: int, elapsed_s: float, lr: float, loss: float) -> None:
        self._row({"kind": "train", "iteration": iteration, "epoch": epoch,
                   "elapsed_s": f"{elapsed_s:.1f}", "lr": f"{lr:.6g}", "train_loss": f"{loss:.5f}"})
        if self.writer:
            self.writer.add_scalar("train/loss", loss, iteration)
            self.writer.add_scalar("train/lr", lr, iteration)

    def validation(self, record: dict[str, Any], dice: dict[int, float]) -> None:
        values = {"kind": "val", "iteration": record["iteration"], "epoch": record["epoch"],
                  "elapsed_s": record["elapsed_s"], "val_mean": f"{record['val_mean']:.5f}"}
        for k, v in dice.items():
            values[f"dice_{self.label_names[k]}"] = f"{v:.5f}"
            if self.writer:
                self.writer.add_scalar(f"val/dice_{self.label_names[k]}", v, record["iteration"])
        self._row(values)
        if self.writer:
            self.writer.add_scalar("val/mean_dice", record["val_mean"], record["iteration"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def build_card(config: TrainConfig, plan: TrainingPlan, data: PreparedRun, *,
               history: list[dict[str, Any]], best: dict[str, Any] | None, runtime: Runtime,
               iteration: int, elapsed_s: float) -> ModelCard:
    """The model card of a checkpoint: everything to apply it, and how it was trained."""
    colors = {k: DEFAULT_COLORS[k % len(DEFAULT_COLORS)] for k in plan.label_names if k}
    return ModelCard(
        name=config.name,
        network=plan.network,
        label_names=dict(plan.label_names),
        roi_size=list(plan.patch_size),
        normalization=plan.normalization,
        target_spacing=plan.target_spacing,
        modality=plan.modality,
        description=f"{config.name}: trained with medseg-train on {config.data.path}",
        label_colors=colors,
        label_offset=list(config.augment.label_offset),
        domain=data.domain,
        training={
            "dataset": {"source": config.data.source, "path": str(config.data.path),
                        "num_cases": len(data.split["train"]) + len(data.split["val"])},
            "split": data.split,
            "config": config.to_dict(),
            "plan": plan.to_dict(),
            "iterations": iteration,
            "epochs": iteration / config.iters_per_epoch,
            "elapsed_s": round(elapsed_s, 1),
            "best": best,
            "history": history,
            "machine": runtime.describe(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        fingerprint=data.fingerprint.to_dict(),
        versions=library_versions(),
        input_channels=(list(config.data.channels)
                        if config.data.channels and not config.data.channel_rule else None),
        channel_rule=config.data.channel_rule,
        fov_pixels=list(config.fov_pixels) if config.fov_pixels else None,
        context_slices=plan.context_slices,
        instances=({"method": INSTANCE_METHOD[config.data.instance_targets]}
                   if config.data.instance_targets else None),
    )
