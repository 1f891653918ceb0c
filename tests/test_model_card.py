import json

import pytest
import torch

from medseg.errors import ModelError
from medseg.model_card import (
    CARD_METADATA_KEY,
    ModelCard,
    NormalizationConfig,
    load_model,
    read_model_card,
    save_model,
)
from medseg.networks import build_network, plan_network


def _card() -> ModelCard:
    net = plan_network(spatial_dims=3, in_channels=1, out_channels=3, patch_size=[16, 16, 16])
    return ModelCard(
        name="tiny",
        network=net,
        label_names={0: "background", 1: "anterior", 2: "posterior"},
        roi_size=[16, 16, 16],
        normalization=NormalizationConfig(scheme="ct", clip=(-100, 200), mean=40.0, std=50.0),
        target_spacing=[1.0, 1.0, 2.0],
        label_colors={1: (255, 0, 0), 2: (0, 0, 255)},
    )


def test_save_load_roundtrip_same_outputs(tmp_path):
    torch.manual_seed(0)
    card = _card()
    net = build_network(card.network).eval()
    path = save_model(tmp_path / "m.safetensors", net, card)
    loaded, card2 = load_model(path)
    assert card2 == card and card2.hash() == card.hash()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary behind


def test_corrupt_and_foreign_files_raise_model_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ModelError, match="bad.safetensors"):
        read_model_card(bad)
    with pytest.raises(ModelError, match="not found"):
        read_model_card(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelError, match="no medseg model card"):
        read_model_card(foreign)


def test_card_from_newer_format_is_refused():
    d = _card().to_dict()
    d["format_version"] = 99
    with pytest.raises(ModelError, match="newer"):
        ModelCard.from_dict(json.loads(json.dumps(d)))
    assert CARD_METADATA_KEY == "medseg.model_card"
