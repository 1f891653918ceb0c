"""Checkpoints: ``<tag>.safetensors`` (weights + full model card) and ``<tag>_state.pt``.

The state file holds what a resumed run needs beyond the weights (optimiser, schedule
position, epoch, RNG state, history), as tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``. The weights file is written with
:func:`medseg.model_card.save_model` (atomic, no pickled code).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medseg.errors import ModelError
from medseg.io.atomic import atomic_path
from medseg.model_card import ModelCard, save_model

logger = logging.getLogger(__name__)


def checkpoint_paths(run_dir: str | Path, tag: str) -> tuple[Path, Path]:
    """``(weights, state)`` paths of checkpoint ``tag`` (``"last"``/``"best"``) in ``run_dir``."""
    run_dir = Path(run_dir)
    return run_dir / f"{tag}.safetensors", run_dir / f"{tag}_state.pt"


def save_checkpoint(run_dir: str | Path, tag: str, model: torch.nn.Module, card: ModelCard,
                    state: dict[str, Any]) -> Path:
    """Write weights + card, then the resume state (both atomically)."""
    weights, state_path = checkpoint_paths(run_dir, tag)
    save_model(weights, model, card)
    with atomic_path(state_path) as tmp:
        torch.save(state, tmp)
    return weights


def load_state(run_dir: str | Path, tag: str = "last") -> dict[str, Any]:
    """Load a resume state safely (``weights_only=True``: no code is unpickled)."""
    _, state_path = checkpoint_paths(run_dir, tag)
    if not state_path.is_file():
        raise ModelError(f"no checkpoint to resume from: {state_path} does not exist")
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise ModelError(f"{state_path}: not a readable medseg training state ({exc})") from exc
