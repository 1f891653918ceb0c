"""A card's channel rule is applied by the engine exactly as training applies it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ModelError
from medseg.inference import Segmenter
from medseg.io import ImageMeta, MedImage
from medseg.model_card import load_model, save_model
from medseg.models import resolve_model
from medseg.transforms.channels import apply_channel_rule


def test_engine_applies_the_cards_channel_rule(tmp_path: Path) -> None:
    model, card = load_model(resolve_model("nuclei"))
    card.channel_rule = "luminance-inverted"
    ruled = save_model(tmp_path / "ruled.safetensors", model, card)
    rng = np.random.default_rng(0)
    rgba = rng.integers(150, 256, (4, 64, 72), dtype=np.uint8)
    rgba[:3, 20:30, 30:42] = np.array([60, 20, 110])[:, None, None]  # a dark purple blob
    rgba[3] = 255
    meta = ImageMeta(spacing=(1.0, 1.0), origin=(0.0, 0.0),
                     direction=((1.0, 0.0), (0.0, 1.0)))
    colour = MedImage(rgba, meta)
    grey = MedImage(apply_channel_rule(rgba, "luminance-inverted"), meta)
    with_rule = Segmenter.from_file(ruled, device="cpu").predict(colour)
    by_hand = Segmenter.from_file("nuclei", device="cpu").predict(grey)
    np.testing.assert_array_equal(with_rule.labels.array, by_hand.labels.array)
    assert with_rule.labels.array.max() >= 1  # the blob is an object


def test_a_channel_rule_needs_a_one_channel_network() -> None:
    _, card = load_model(resolve_model("nuclei"))
    data = card.to_dict()
    data["channel_rule"] = "sepia"
    with pytest.raises(ModelError, match="channel_rule must be one of"):
        type(card).from_dict(data)
