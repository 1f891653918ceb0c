"""Ship a trained checkpoint: a model file whose card also records its evaluation.

The shipped file is the checkpoint's weights with its card (config, split, history, machine,
versions) plus an ``evaluation`` section (figures measured on held-out data after training) and
a human-readable copy of the card as JSON beside it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError
from medseg.io.atomic import atomic_write_text
from medseg.model_card import file_sha256, load_model, save_model

logger = logging.getLogger(__name__)


def export_model(checkpoint: str | Path, destination: str | Path, *,
                 evaluation: dict[str, Any] | None = None, description: str | None = None,
                 weights_dtype: str | None = None, write_card_json: bool = True,
                 postprocess: dict[str, Any] | None = None,
                 instances: dict[str, Any] | None = None, name: str | None = None,
                 confidence: dict[str, Any] | None = None) -> Path:
    """Copy ``checkpoint`` to ``destination`` (``.safetensors``), updating its card.

    Args:
        checkpoint: A ``best``/``last`` checkpoint written by :func:`medseg.training.train`.
        destination: The model file to write (e.g. ``medseg/models/hippocampus.safetensors``).
        evaluation: Figures measured after training, stored as ``card.training["evaluation"]``.
        description: Replaces the card's description.
        weights_dtype: ``"float16"`` stores the weights at half precision (half the file; they
            are cast back to float32 on load). Evaluate the file so written, not the checkpoint.
        write_card_json: Also write the card as ``<destination stem>.json``.
        postprocess: The model's default clean-up (card ``postprocess``), chosen after
            training on the validation split.
        instances: Settings merged into the card's ``instances`` entry (seed threshold,
            smallest object), chosen the same way.
        name: The shipped model's name (card ``name``) when it differs from the training
            run's (a variant trained under its own run name and shipped as ``nuclei``); the run's
            name stays in ``training.config``.
        confidence: The card's ``confidence`` entry (``{"threshold": ...}`` and what it was
            chosen on), see :mod:`medseg.inference.confidence`.

    Returns:
        The destination path.
    """
    if weights_dtype not in (None, "float32", "float16"):
        raise ConfigError(f"weights_dtype must be 'float32' or 'float16', got {weights_dtype!r}")
    model, card = load_model(checkpoint)
    if weights_dtype == "float16":
        model = model.half()
        card.training["weights_dtype"] = "float16"
    if evaluation is not None:
        card.training["evaluation"] = evaluation
    if description is not None:
        card.description = description
    if name is not None:
        card.name = name
    if postprocess is not None:
        card.postprocess = dict(postprocess)
    if instances is not None:
        card.instances = {**(card.instances or {}), **instances}
    if confidence is not None:
        card.confidence = dict(confidence)
    card.training["exported_from"] = {"path": str(checkpoint),
                                      "sha256": file_sha256(checkpoint)}
    destination = Path(destination)
    save_model(destination, model, card)
    if write_card_json:
        atomic_write_text(destination.with_suffix(".json"),
                          json.dumps(card.to_dict(), indent=2, sort_keys=True))
    logger.info("exported %s -> %s (%.1f MB)", checkpoint, destination,
                destination.stat().st_size / 1e6)
    return destination
