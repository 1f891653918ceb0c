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
    data["channel_rule"] = "rgb-auto"  # three channels, for a one-channel network
    with pytest.raises(ModelError, match="3 input channel|1 input channel"):
        type(card).from_dict(data)


def test_rgb_auto_keeps_the_colours_inverting_a_bright_background() -> None:
    rgba = np.full((4, 8, 8), 255, np.uint8)
    rgba[:3] = np.array([230, 190, 220], np.uint8)[:, None, None]  # pale pink
    rgba[:3, 2:4, 2:4] = np.array([90, 40, 140], np.uint8)[:, None, None]  # a purple nucleus
    out = apply_channel_rule(rgba, "rgb-auto")
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0, 0], [25, 65, 35])  # 255 - background
    np.testing.assert_array_equal(out[:, 2, 2], [165, 215, 115])  # 255 - nucleus
    dark = np.zeros((1, 8, 8), np.uint16)
    dark[0, 2:4, 2:4] = 900  # fluorescence: kept as it is, repeated
    np.testing.assert_array_equal(apply_channel_rule(dark, "rgb-auto"),
                                  np.repeat(dark, 3, 0).astype(np.float32))


def test_a_widened_network_sees_colour_as_the_base_sees_luminance(tmp_path: Path) -> None:
    """The base's input layer spread over R, G and B by the luma weights: on an H&E-like
    image the widened model's objects are the base model's under ``luminance-auto``."""
    from medseg.training.finetune_run import widened

    model, card = load_model(resolve_model("nuclei"))
    card.channel_rule = "luminance-auto"
    grey = save_model(tmp_path / "grey.safetensors", model, card)
    wide_model, wide_card = widened(model, card, 3)  # a base with a one-channel rule, too
    assert wide_card.channel_rule is None
    wide_card.channel_rule = "rgb-auto"
    wide = save_model(tmp_path / "wide.safetensors", wide_model, wide_card)
    assert wide_card.network.in_channels == 3 and wide_card.image_channels == 3
    rng = np.random.default_rng(1)
    rgba = np.empty((4, 96, 96), np.uint8)
    rgba[:3] = (np.array([230, 190, 220])[:, None, None]
                + rng.normal(0, 6, (3, 96, 96))).clip(0, 255)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in ((20, 24), (50, 60), (75, 30)):
        rgba[:3, (yy - cy) ** 2 + (xx - cx) ** 2 < 60] = np.array([90, 40, 140])[:, None]
    rgba[3] = 255
    meta = ImageMeta(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=((1.0, 0.0), (0.0, 1.0)))
    a = Segmenter.from_file(grey, device="cpu").predict(MedImage(rgba, meta)).labels.array
    b = Segmenter.from_file(wide, device="cpu").predict(MedImage(rgba, meta)).labels.array
    assert a.max() == 3 and b.max() == 3
    assert np.mean((a > 0) == (b > 0)) > 0.99  # per-channel normalisation: nearly the same
