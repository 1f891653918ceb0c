"""The fine-tuned model's file and card: the base's inference settings, the new training
domain, and the story of the fine-tune (base, images, minutes, steps, before/after)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_text
from medseg.model_card import ModelCard, load_model, save_model

logger = logging.getLogger(__name__)


def finetuned_description(base: ModelCard, record: dict[str, Any]) -> str:
    """The new card's description: what it was fine-tuned from, on what, and how it scored."""
    n = len(record["images"])
    rule = (f" Colour images become one channel by the rule {record['channel_rule']!r}, in "
            "training and at inference alike." if record.get("channel_rule") else "")
    kept = (f" Training ({record['steps']} steps, {record['trained']:.3f}) did not beat the "
            f"base's weights with the channel rule alone ({record['base_with_rule']:.3f}): "
            "these are the base's weights." if record.get("kept_base_weights") else "")
    return (f"{base.name} fine-tuned on {n} corrected image(s) from {record['data']} for "
            f"{record['minutes']:g} min ({record['steps']} steps). {record['metric']} on "
            f"{record['hold_out']}: base {record['before']:.3f}, fine-tuned "
            f"{record['after']:.3f}.{kept}{rule} {limitations(record)} Base model "
            f"{base.name!r}: see training.finetune.base and the base's own card.")


def limitations(record: dict[str, Any]) -> str:
    """What the fine-tuned model was not checked on."""
    if record.get("keep_skill"):
        return (f"Images like the base model's ({record['keep_skill']}) were mixed in to keep "
                "its skill; check results on images unlike both.")
    return (f"Trained on {len(record['images'])} image(s) only, without the base model's own "
            "kind of image: its skill there was not kept or checked.")


def write_finetuned_model(checkpoint: Path, destination: Path, *, base: ModelCard,
                          name: str, record: dict[str, Any],
                          instances: dict[str, Any] | None = None,
                          weights: Path | None = None) -> tuple[Path, Path]:
    """Write the checkpoint's weights with a card built from the base's and the run's.

    Kept from the base: label names and colours, clean-up default, instance settings (unless
    ``instances`` gives those re-chosen on the held-back images). From the run: network and
    preprocessing (the same as the base's), channel rule, training domain (the images trained
    on, with the kept base images when ``keep_skill``). Dropped:
    the base's confidence threshold (chosen on the base's validation images). Added:
    ``training["finetune"] = record``.

    ``weights``: take the weights from this model file instead of the checkpoint's (the base's
    weights, when training did not beat them), the card still from the checkpoint.

    Returns:
        The model file and its card's JSON copy.
    """
    model, card = load_model(checkpoint)
    if weights is not None:
        model, _ = load_model(weights)
    card.name = name
    card.label_names = dict(base.label_names)
    card.label_colors = dict(base.label_colors)
    chosen = instances if instances is not None else base.instances
    card.instances = dict(chosen) if chosen is not None else None
    card.postprocess = dict(base.postprocess) if base.postprocess else None
    card.modality = base.modality
    card.confidence = None
    card.description = finetuned_description(base, record)
    if card.domain is not None:
        card.domain = {
            **card.domain, "modality": (base.domain or {}).get("modality", base.modality),
            "intended_use": f"Images like the {len(record['images'])} the model was "
                            f"fine-tuned on ({record['data']}); base model: "
                            f"{(base.domain or {}).get('intended_use', base.name)}",
            "limitations": limitations(record),
        }
    card.training["finetune"] = record
    destination = Path(destination)
    save_model(destination, model, card)
    card_path = destination.with_name(destination.name[: -len(".safetensors")] + ".json")
    atomic_write_text(card_path, json.dumps(card.to_dict(), indent=2, sort_keys=True))
    logger.info("wrote %s (%s)", destination, card_path.name)
    return destination, card_path
