"""The training config of a fine-tune: the base model's recipe from its card, a fine-tuning
schedule, and the folder's cases (written as a manifest in the run folder)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_text
from medseg.model_card import ModelCard
from medseg.training.config import INSTANCE_METHOD, TrainConfig, _set_dotted
from medseg.training.sources import CasePair

#: The fine-tune's learning rate, as a fraction of the base recipe's: a few images are learnt
#: gently; from :data:`MANY_IMAGES` training images on, at the base's own rate (H&E, all 31 pool
#: images, 10 min: pooled AP@0.5 on other images 0.600-0.631 at the full rate against
#: 0.571-0.575 at 0.3; 10 images: the same outcome either way; benchmarks/results/finetune_he.txt).
LR_FACTOR = 0.3
LR_FACTOR_MANY = 1.0
MANY_IMAGES = 20
#: Linear warm-up steps (the optimiser's momentum starts from nothing).
WARMUP_ITERS = 20
#: Steps between validations (the best model so far is kept).
ITERS_PER_EPOCH = 50
#: At most this many patches of the card's window drawn per training image (at least one
#: epoch): a few images trained on for the whole budget are learnt by heart (5 H&E images:
#: pooled AP@0.5 on other images fell with more steps, benchmarks/results/finetune_he.txt); the
#: schedule then ends before the time budget does. Smaller patches (a fine-tune fitted to a slow
#: machine, :mod:`medseg.training.finetune_speed`) draw as many pixels: more of them.
MAX_PATCHES_PER_IMAGE = 300
#: Options of the base recipe a fine-tune keeps (everything that shapes what is learned).
KEPT = ("loss", "optimizer", "momentum", "weight_decay", "batch_size", "foreground_prob",
        "case_sampling", "weight_map", "weight_map_w0", "weight_map_sigma", "amp", "augment",
        "val_tta", "lr")
METHOD_TARGETS = {method: target for target, method in INSTANCE_METHOD.items()}


def write_manifest(path: Path, pairs: Sequence[CasePair]) -> Path:
    """A JSON manifest (``medseg.training.sources``' ``manifest`` source) of ``pairs``."""
    records = [{"case_id": p.case_id, "image": str(Path(p.image).resolve()),
                "label": str(Path(p.label).resolve())} for p in pairs]
    return atomic_write_text(path, json.dumps(records, indent=1))


def finetune_config(card: ModelCard, *, base_path: Path, name: str, manifest: Path,
                    val_cases: Sequence[str], run_dir: Path, minutes: float,
                    channel_rule: str | None, seed: int, num_threads: int | None,
                    device: str | None, channels_needed: bool = True, n_train: int = 0,
                    overrides: dict[str, Any] | None = None,
                    patch_size: Sequence[int] | None = None) -> TrainConfig:
    """The fine-tune's :class:`TrainConfig`: the base recipe (``card.training["config"]``; the
    defaults when the card has none), starting from ``base_path``'s weights with
    :data:`LR_FACTOR` of its learning rate, :data:`WARMUP_ITERS` warm-up steps and a poly
    decay over ``minutes`` or over :data:`MAX_PATCHES_PER_IMAGE` patches for each of the
    ``n_train`` training cases, whichever ends first; ``overrides`` (dotted keys) last.
    ``channels_needed``: the images have another channel count than the network, so the
    card's ``input_channels`` are picked. ``patch_size``: smaller patches than the card's
    window (:func:`medseg.training.finetune_speed.fitted_patch`), as many pixels in all.
    """
    recipe = dict((card.training or {}).get("config") or {})
    kept = {k: recipe[k] for k in KEPT if k in recipe}
    method = (card.instances or {}).get("method") if card.instances is not None else None
    data: dict[str, Any] = {
        "source": "manifest", "path": str(manifest), "val_cases": list(val_cases),
        "modality": card.modality or None, "stream": True,
        "instance_targets": METHOD_TARGETS[method] if method else None,
        "label_names": None if method else {int(k): v for k, v in card.label_names.items()},
        "channel_rule": channel_rule,
        "channels": card.input_channels if channels_needed and not channel_rule else None,
    }
    config: dict[str, Any] = {
        **kept,
        "name": name, "data": data, "output_dir": str(run_dir), "seed": seed,
        "init_from": str(base_path),
        "lr": float(kept.get("lr", 0.01)) * (LR_FACTOR_MANY if n_train >= MANY_IMAGES
                                              else LR_FACTOR),
        "warmup_iters": WARMUP_ITERS, "lr_schedule": "poly",
        "epochs": max_epochs(n_train, int(kept.get("batch_size") or 2),
                             math.prod(card.roi_size) / math.prod(patch_size or card.roi_size)),
        "iters_per_epoch": ITERS_PER_EPOCH, "val_every": 1,
        "time_budget_min": minutes, "val_overlap": 0.25,
        "num_threads": num_threads, "device": device,
        "fov_pixels": card.fov_pixels,
        "deep_supervision": card.network.deep_supervision,
    }
    if patch_size is not None:
        config["patch_size"] = [int(p) for p in patch_size]
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    return TrainConfig.from_dict(config, source="fine-tune")


def max_epochs(n_train: int, batch_size: int, patches_per_window: float = 1.0) -> int:
    """Epochs (of :data:`ITERS_PER_EPOCH` steps) that draw about
    :data:`MAX_PATCHES_PER_IMAGE` windows' worth of pixels per training case (at least one
    epoch); ``patches_per_window``: how many of the patches trained on make one window.

    Examples:
        >>> max_epochs(4, 4), max_epochs(25, 4), max_epochs(0, 4), max_epochs(25, 4, 4.0)
        (6, 38, 1, 150)
    """
    steps = MAX_PATCHES_PER_IMAGE * n_train * patches_per_window / max(batch_size, 1)
    return max(1, -(-int(steps) // ITERS_PER_EPOCH))
