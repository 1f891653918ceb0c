"""The training losses: cross-entropy and Dice + CE, with and without deep supervision."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medseg.errors import ConfigError
from medseg.training.config import DataConfig, TrainConfig
from medseg.training.loop import _make_loss


def _plan(deep_supervision: bool) -> SimpleNamespace:
    return SimpleNamespace(network=SimpleNamespace(deep_supervision=deep_supervision))


def test_ce_loss_is_torch_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    loss = _make_loss(_plan(False), "ce")(logits, label)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, label[:, 0]))


def test_ce_deep_supervision_weights_heads_by_halves() -> None:
    g = torch.Generator().manual_seed(1)
    heads = torch.randn(2, 3, 3, 8, 8, generator=g)  # (B, main + 2 deep heads, K, H, W)
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    ce = [torch.nn.functional.cross_entropy(heads[:, i], label[:, 0]) for i in range(3)]
    loss = _make_loss(_plan(True), "ce")(heads, label)
    assert torch.allclose(loss, ce[0] + 0.5 * ce[1] + 0.25 * ce[2])


def test_dice_ce_differs_from_ce() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    ce = _make_loss(_plan(False), "ce")(logits, label)
    dice_ce = _make_loss(_plan(False), "dice_ce")(logits, label)
    assert dice_ce > ce  # the Dice term is positive for a random prediction


def test_unknown_loss_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="loss must be"):
        TrainConfig(name="x", data=DataConfig(source="msd", path="."), loss="focal")
