"""2.5D models: each slice's neighbours as extra channels, the same in training and inference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from inference_helpers import ball_image, oblique_meta, threshold_card

from medseg.errors import ModelError
from medseg.inference import Segmenter
from medseg.io import MedImage
from medseg.model_card import ModelCard, NetworkConfig
from medseg.training.config import ConfigError, TrainConfig
from medseg.training.dataset import RawCase, prepare_case
from medseg.transforms.context import with_neighbour_slices


class ChannelNet(torch.nn.Module):
    """Class 1 where input channel ``channel`` exceeds 0.5: which neighbour it reads decides
    where the labels land."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, self.channel:self.channel + 1]
        return torch.cat([-v * 4, (v - 0.5) * 4], dim=1)


def _card(k: int, channels: int = 1) -> ModelCard:
    card = threshold_card(roi=[16, 16])
    net = dataclasses.replace(card.network, in_channels=channels * (2 * k + 1))
    return dataclasses.replace(card, network=net, context_slices=k)


def test_neighbours_are_stacked_in_order_and_clamped_at_the_ends() -> None:
    v = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)
    out = with_neighbour_slices(v, 2)
    assert out.shape == (10, 3, 4, 5)
    for z in range(5):
        for o in range(-2, 3):
            src = min(max(z + o, 0), 4)
            for c in range(2):  # channel (o + k) * C + c is channel c of slice z + o
                np.testing.assert_array_equal(out[(o + 2) * 2 + c, ..., z], v[c, ..., src])
    assert with_neighbour_slices(v, 0) is v
    flat = v[..., 0]  # a 2D image is its own neighbour
    np.testing.assert_array_equal(with_neighbour_slices(flat, 1), np.concatenate([flat] * 3))
    with pytest.raises(ValueError, match=">= 0"):
        with_neighbour_slices(v, -1)


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_engine_feeds_each_slice_its_neighbours(offset: int) -> None:
    """A network that reads the channel of slice z + offset puts slice z + offset's mask on
    slice z: the neighbours arrive in order and unshifted, batch boundaries included."""
    meta = oblique_meta(3)
    image, mask = ball_image((24, 22, 19), meta, radius_mm=12.0)
    seg = Segmenter(ChannelNet(offset + 1), _card(1), device="cpu", sw_batch_size=4)
    pred = seg.predict(image, return_probabilities=True)
    z = np.clip(np.arange(19) + offset, 0, 18)
    np.testing.assert_array_equal(pred.labels.array[0], mask[..., z])
    assert pred.labels.meta.same_grid(meta, atol_mm=1e-9)
    assert pred.probabilities is not None and pred.probabilities.array.shape == (2, 24, 22, 19)


def test_confidence_from_the_foreground_channel_equals_the_full_softmax() -> None:
    meta = oblique_meta(3)
    image, _ = ball_image((24, 22, 9), meta, radius_mm=10.0)
    image = image.with_array(image.array * 0.7 + 0.1)  # probabilities neither 0 nor 1
    card = dataclasses.replace(_card(1), confidence={"score": "inside_probability",
                                                      "threshold": 0.5})
    seg = Segmenter(ChannelNet(1), card, device="cpu")
    alone = seg.predict(image)  # keeps only the foreground probability
    full = seg.predict(image, return_probabilities=True)
    assert alone.confidence is not None and full.confidence is not None
    assert alone.confidence.score == pytest.approx(full.confidence.score, abs=2e-3)
    assert 0.5 < alone.confidence.score < 0.99


def test_a_2d_image_is_its_own_neighbour_and_channels_are_checked() -> None:
    meta = oblique_meta(2, spacing=(1.0, 1.0))
    image, mask = ball_image((30, 28), meta, radius_mm=8.0)
    pred = Segmenter(ChannelNet(2), _card(1), device="cpu").predict(image)
    np.testing.assert_array_equal(pred.labels.array[0], mask)
    two = MedImage(np.concatenate([image.array] * 2), meta)
    with pytest.raises(ModelError, match="expects 1 channel"):
        Segmenter(ChannelNet(0), _card(1), device="cpu").predict(two)


def test_cards_and_configs_refuse_impossible_context() -> None:
    card = _card(1)
    assert card.image_channels == 1 and card.network.in_channels == 3
    assert ModelCard.from_dict(card.to_dict()).context_slices == 1
    bad = card.to_dict()
    bad["network"]["in_channels"] = 2  # not a multiple of 2k + 1 = 3
    with pytest.raises(ModelError, match="context_slices"):
        ModelCard.from_dict(bad)
    three_d = NetworkConfig(spatial_dims=3, in_channels=3, out_channels=2)
    with pytest.raises(ModelError, match="context_slices"):
        dataclasses.replace(card, network=three_d, roi_size=[8, 8, 8])
    data = {"source": "msd", "path": "."}
    with pytest.raises(ConfigError, match="context_slices"):
        TrainConfig.from_dict({"name": "x", "data": data, "context_slices": -1})
    with pytest.raises(ConfigError, match="context_slices"):
        TrainConfig.from_dict({"name": "x", "data": data, "context_slices": 1,
                               "spatial_dims": 3})


def test_training_cases_get_the_same_channels_as_the_engine() -> None:
    rng = np.random.default_rng(1)
    meta = oblique_meta(3)
    vol = rng.random((1, 12, 10, 6)).astype(np.float32)
    lab = np.zeros((1, 12, 10, 6), np.uint8)
    lab[0, 3:6, 3:6, 2] = 1
    raw = RawCase("c", MedImage(vol, meta), MedImage(lab, meta))
    card = _card(1)
    prepared = prepare_case(raw, normalization=card.normalization, target_spacing=None,
                            num_classes=2, context_slices=1)
    assert tuple(prepared.image.shape) == (3, 12, 10, 6)
    np.testing.assert_array_equal(prepared.image.numpy(), with_neighbour_slices(vol, 1))
    np.testing.assert_array_equal(prepared.label.numpy(), lab)  # labels are not stacked


@pytest.mark.parametrize(("name", "scheme", "nonzero"), [
    ("percentile", "percentile", False), ("percentile-nonzero", "percentile", True),
    ("zscore-nonzero", "zscore", True)])
def test_plan_of_a_2d_model_over_volumes(name: str, scheme: str, nonzero: bool) -> None:
    """The plan carries the context into the network's input channels and the named
    normalisation (with or without the zero background) into the card."""
    from medseg.training.plan import Fingerprint, resolve_plan

    fp = Fingerprint(num_cases=4, spatial_dims=3, in_channels=1, median_shape=[64, 64, 20],
                     max_shape=[64, 64, 30], median_spacing=[1.0, 1.0, 1.0], modality="MR",
                     label_values=[0, 1], foreground_percentiles=[0.0, 1.0, 2.0],
                     foreground_mean=1.0, foreground_std=0.5)
    config = TrainConfig.from_dict({"name": "x", "data": {"source": "msd", "path": "."},
                                    "spatial_dims": 2, "context_slices": 2,
                                    "normalization": name, "patch_size": [64, 64]})
    plan = resolve_plan(config, fp, label_names={0: "bg", 1: "fg"}, device_type="cpu")
    assert plan.network.in_channels == 5 and plan.context_slices == 2
    assert (plan.normalization.scheme, plan.normalization.nonzero) == (scheme, nonzero)
    with pytest.raises(ConfigError, match="normalization"):
        TrainConfig.from_dict({"name": "x", "data": {"source": "msd", "path": "."},
                               "normalization": "minmax"})


@pytest.mark.parametrize("volume", [True, False])
def test_a_cards_decision_threshold_draws_the_labels(volume: bool) -> None:
    """``postprocess.threshold`` (chosen on out-of-fold predictions) labels a voxel where the
    foreground probability reaches it, through the slice path and the image path alike; the
    probabilities themselves are unchanged."""
    from inference_helpers import ThresholdNet

    shape = (20, 24, 3) if volume else (20, 24)
    ramp = np.linspace(0.0, 1.0, 20 * 24, dtype=np.float32).reshape(20, 24)
    array = np.repeat(ramp[..., None], 3, axis=-1) if volume else ramp
    image = MedImage(array[None], oblique_meta(len(shape)))
    card = dataclasses.replace(threshold_card(roi=[16, 16]),
                               postprocess={"threshold": 0.7, "keep_largest": False})
    pred = Segmenter(ThresholdNet(), card, device="cpu").predict(image,
                                                                 return_probabilities=True)
    p1 = 1.0 / (1.0 + np.exp(-(8.0 * array - 2.0)))  # ThresholdNet's softmax, class 1
    assert pred.threshold == 0.7
    assert pred.probabilities is not None
    np.testing.assert_allclose(pred.probabilities.array[1], p1, atol=2e-3)
    sure = np.abs(p1 - 0.7) > 3e-3  # float16 probabilities: leave the boundary voxels out
    np.testing.assert_array_equal(pred.labels.array[0][sure], (p1 >= 0.7)[sure])
    alone = Segmenter(ThresholdNet(), card, device="cpu").predict(image)  # no probabilities asked
    np.testing.assert_array_equal(alone.labels.array, pred.labels.array)
    with pytest.raises(ModelError, match="threshold"):
        Segmenter(ThresholdNet(), dataclasses.replace(card, postprocess={"threshold": 1.5}),
                  device="cpu")


def test_a_threshold_on_three_classes_keeps_every_class_over_a_volume() -> None:
    """With more than two classes the threshold needs every class's probability, also when
    none is asked for: the labels equal those drawn from the returned probabilities."""
    from medseg.inference.postprocess import labels_from_probabilities

    class ThreeNet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x[:, :1]
            return torch.cat([(0.5 - v) * 4, (v - 0.3) * 3, (v - 0.6) * 6], dim=1)

    card = threshold_card(roi=[16, 16])
    card = dataclasses.replace(
        card, network=dataclasses.replace(card.network, out_channels=3),
        label_names={0: "bg", 1: "low", 2: "high"}, postprocess={"threshold": 0.7})
    ramp = np.linspace(0.0, 1.0, 20 * 24, dtype=np.float32).reshape(20, 24)
    image = MedImage(np.repeat(ramp[..., None], 3, axis=-1)[None], oblique_meta(3))
    seg = Segmenter(ThreeNet(), card, device="cpu")
    alone = seg.predict(image)
    full = seg.predict(image, return_probabilities=True)
    assert full.probabilities is not None
    expected = labels_from_probabilities(full.probabilities.array, 0.7)
    np.testing.assert_array_equal(alone.labels.array[0], expected)
    assert set(np.unique(expected)) == {0, 1, 2}
