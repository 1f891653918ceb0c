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


def test_export_with_float16_weights_halves_the_file_and_loads_as_float32(tmp_path):
    from medseg.errors import ConfigError
    from medseg.training.export import export_model

    torch.manual_seed(0)
    card = _card()
    net = build_network(card.network).eval()
    ckpt = save_model(tmp_path / "ckpt.safetensors", net, card)
    full = export_model(ckpt, tmp_path / "full.safetensors", write_card_json=False)
    half = export_model(ckpt, tmp_path / "half.safetensors", weights_dtype="float16",
                        name="shipped-name")
    assert load_model(full)[1].name == card.name  # the run's name unless told otherwise
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded, card2 = load_model(half)
    assert card2.training["weights_dtype"] == "float16"
    assert card2.name == "shipped-name"
    assert card2.training["exported_from"]["path"] == str(ckpt)
    assert json.loads((tmp_path / "half.json").read_text())["training"]["weights_dtype"] == \
        "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for name, p in net.state_dict().items():  # each weight is its float16 rounding
        torch.testing.assert_close(loaded.state_dict()[name], p.half().float(), rtol=0, atol=0)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-2, atol=1e-2)
    with pytest.raises(ConfigError, match="weights_dtype"):
        export_model(ckpt, tmp_path / "bad.safetensors", weights_dtype="int8")


def test_card_refuses_an_unknown_instance_method_or_negative_channels() -> None:
    from medseg.networks import plan_network

    net = plan_network(spatial_dims=2, in_channels=1, out_channels=3, patch_size=[16, 16])
    base = {"name": "x", "network": net, "label_names": {0: "bg", 1: "a", 2: "b"},
            "roi_size": [16, 16]}
    net2 = plan_network(spatial_dims=2, in_channels=1, out_channels=2, patch_size=[16, 16])
    two = {**base, "network": net2, "label_names": {0: "bg", 1: "object"}}
    assert ModelCard(**two, instances={"method": "components"}).instances == {
        "method": "components"}
    # each method reads its own classes: a card whose classes are another method's is refused
    # (a 4-class centre model relabelled 'boundary' would seed on rings around its centres)
    with pytest.raises(ModelError, match="'components' reads 2 classes, the card has 3"):
        ModelCard(**base, instances={"method": "components"})
    with pytest.raises(ModelError, match="instances.method must be one of"):
        ModelCard(**base, instances={"method": "stardist"})
    with pytest.raises(ModelError, match="instances.seeds must be"):
        ModelCard(**base, instances={"method": "boundary", "seeds": "flows"})
    for bad in ({"h": -1}, {"seed_threshold": 1.5}, {"sigma": float("nan")}, {"min_size": "8"},
                {"h": True}, {"max_grow": -1}, {"min_score": 1.5}):
        with pytest.raises(ModelError, match=f"instances.{next(iter(bad))} must be a number"):
            ModelCard(**base, instances={"method": "boundary", **bad})
    with pytest.raises(ModelError, match="max_grow applies to the 'boundary' and 'centre'"):
        ModelCard(**two, instances={"method": "components", "max_grow": 2})
    # the centre method needs its fourth class; its threshold is a probability
    with pytest.raises(ModelError, match="'centre' reads 4 classes, the card has 3"):
        ModelCard(**base, instances={"method": "centre"})
    net4 = plan_network(spatial_dims=2, in_channels=1, out_channels=4, patch_size=[16, 16])
    four = {**base, "network": net4, "label_names": {0: "bg", 1: "a", 2: "b", 3: "centre"}}
    assert ModelCard(**four, instances={"method": "centre", "centre_threshold": 0.4,
                                        "max_grow": 3}).instances["centre_threshold"] == 0.4
    with pytest.raises(ModelError, match="'boundary' reads 3 classes, the card has 4"):
        ModelCard(**four, instances={"centre_threshold": 0.4})  # method defaults to boundary
    with pytest.raises(ModelError, match="instances.centre_threshold must be a number"):
        ModelCard(**four, instances={"method": "centre", "centre_threshold": 2})
    for other in ({"seeds": "distance"}, {"h": 1.0}, {"sigma": 1.0}):
        with pytest.raises(ModelError, match="seeded by its centres"):
            ModelCard(**four, instances={"method": "centre", **other})
    with pytest.raises(ModelError, match="input_channels must list non-negative"):
        ModelCard(**base, input_channels=[-1])


def _with_card_text(tmp_path, text: str):
    """A model file whose card metadata is ``text`` (weights of the tiny network)."""
    from safetensors.torch import save_model as save_safetensors_model

    path = tmp_path / "hostile.safetensors"
    save_safetensors_model(build_network(_card().network), str(path),
                           metadata={CARD_METADATA_KEY: text})
    return path


def _edited(**changes) -> str:
    d = json.loads(_card().to_json())
    for key, value in changes.items():
        target, *rest = key.split(".")
        if rest:
            d[target][rest[0]] = value
        else:
            d[key] = value
    return json.dumps(d)


@pytest.mark.parametrize(("text", "reason"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (_edited(**{"network.filters": [16, 32, 10**6]}), r"filters must be integers in \[1, 4096\]"),
    (_edited(**{"network.in_channels": 10**6}), r"in_channels must be integers"),
    (_edited(**{"network.out_channels": 10**6}), r"out_channels must be integers"),
    (_edited(roi_size=[10**5, 16, 16]), r"roi_size must be 3 integers in \[1, 4096\]"),
    (_edited(roi_size=[16, 16]), r"roi_size must be 3 integers"),
    (_edited(target_spacing=[0, 1, 1]), "target_spacing must be 3 finite positive numbers"),
    (_edited(target_spacing=[1, "x", 1]), "target_spacing must be 3 finite positive numbers"),
    (_edited(label_names={"0": "bg", "7": "x"}), r"label values \[0, 7\] do not fit 3"),
])
def test_damaged_or_hostile_cards_are_refused_in_one_line(tmp_path, text, reason) -> None:
    with pytest.raises(ModelError, match=reason) as info:
        load_model(_with_card_text(tmp_path, text))
    assert "\n" not in str(info.value)


def test_non_finite_weights_are_refused(tmp_path) -> None:
    card = _card()
    net = build_network(card.network)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = float("nan")
    path = save_model(tmp_path / "nan.safetensors", net, card)
    with pytest.raises(ModelError, match=r"1 weight tensor\(s\) hold NaN or infinite values"):
        load_model(path)


def test_a_tiny_target_spacing_is_refused_before_resampling(monkeypatch) -> None:
    import numpy as np

    from medseg.errors import ImageReadError
    from medseg.inference import Segmenter
    from medseg.io import ImageMeta, MedImage

    card = ModelCard.from_dict({**_card().to_dict(), "target_spacing": [1e-4, 1e-4, 1e-4],
                                "normalization": {"scheme": "zscore"}})
    segmenter = Segmenter(build_network(card.network), card, device="cpu")
    image = MedImage(np.zeros((1, 20, 20, 10), np.float32), ImageMeta.identity(3))
    with pytest.raises(ImageReadError, match=r"model 'tiny' at spacing .* announces "
                                             r"4,000,000,000,000,000 voxels"):
        segmenter.predict(image)


def test_label_offset_is_a_typed_card_field_read_from_older_cards() -> None:
    d = _card().to_dict()
    del d["label_offset"]
    d["training"] = {"config": {"augment": {"label_offset": [0.5, -0.5, 0]}}}
    assert ModelCard.from_dict(d).label_offset == [0.5, -0.5, 0.0]  # a card from before
    with pytest.raises(ModelError, match="label_offset must be 3 finite voxel offsets"):
        ModelCard.from_dict({**_card().to_dict(), "label_offset": [1.0, 2.0]})
