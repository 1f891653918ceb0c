"""The fast 2D path: a 2D model runs an image (or each slice of a volume) whole, in one forward
pass with reflected context, instead of in overlapping windows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from inference_helpers import ThresholdNet, ball_image, oblique_meta, threshold_card, tiny_card

from medseg.inference import Segmenter, engine
from medseg.inference.preprocess import window_normalizer
from medseg.inference.windows import plan_whole, reflect_pad


class ShapeRecorder(ThresholdNet):
    """The threshold net, remembering the input shape of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return super().forward(x)


def test_a_2d_image_larger_than_the_window_runs_whole_on_its_own_grid() -> None:
    meta = oblique_meta(2, spacing=(0.8, 1.3))
    image, mask = ball_image((70, 45), meta, radius_mm=20.0)
    net = ShapeRecorder()
    pred = Segmenter(net, threshold_card(roi=[16, 16]), device="cpu").predict(image)
    np.testing.assert_array_equal(pred.labels.array[0], mask)  # not shifted, not transposed
    assert pred.labels.meta.same_grid(meta, atol_mm=1e-9)
    assert pred.num_windows == 1
    # one pass; 2 px of reflected context (a quarter of the overlap) rounded up to the /8 divisor
    assert net.shapes == [(1, 1, 80, 56)]
    windowed = Segmenter(ThresholdNet(), threshold_card(roi=[16, 16]), device="cpu",
                         whole_image=False).predict(image)
    assert windowed.num_windows > 1
    np.testing.assert_array_equal(windowed.labels.array, pred.labels.array)


def test_whole_image_equals_the_network_on_the_numpy_reflected_image() -> None:
    """The engine's padding and crop, against numpy's reflection padding done by hand."""
    card, net = tiny_card(spatial_dims=2, roi=[32, 32])
    image = np.random.default_rng(3).normal(10, 3, (1, 50, 41)).astype("f4")
    meta = oblique_meta(2)
    # float32 as the hand-made reference (a CPU with bf16 would run autocast by default)
    seg = Segmenter(net, card, device="cpu", whole_image=True, amp=False)
    pred = seg.predict(engine.MedImage(image, meta), return_probabilities=True)
    before, padded = plan_whole((50, 41), card.roi_size, card.network.divisor)
    # 4 px of context per side (a quarter of the overlap), rounded up to the /8 divisor
    assert padded == (64, 56) and before == (7, 7)
    x = window_normalizer(image, card.normalization)(image)
    pads = [(0, 0)] + [(b, p - n - b) for b, p, n in zip(before, padded, (50, 41), strict=True)]
    xp = np.pad(x, pads, mode="reflect")
    with torch.inference_mode():
        logits = seg.model(torch.from_numpy(xp)[None].contiguous(
            memory_format=torch.channels_last))[0, :, 7:57, 7:48]
    np.testing.assert_array_equal(pred.labels.array[0], logits.argmax(0).numpy())
    assert pred.probabilities is not None
    np.testing.assert_allclose(pred.probabilities.array.astype("f4"),
                               logits.softmax(0).numpy(), atol=1e-3)


def test_reflect_pad_matches_numpy_also_beyond_the_axis_length() -> None:
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    out = reflect_pad(x, (7, 4), (20, 12))
    expected = np.pad(x.numpy(), [(0, 0), (7, 8), (4, 5)], mode="reflect")
    np.testing.assert_array_equal(out.numpy(), expected)


def test_an_image_too_large_to_run_whole_goes_through_the_sliding_window(monkeypatch) -> None:
    monkeypatch.setattr(engine, "_WHOLE_IMAGE_PIXELS", 60 * 60)
    meta = oblique_meta(2)
    image, mask = ball_image((70, 45), meta, radius_mm=20.0)
    seg = Segmenter(ThresholdNet(), threshold_card(roi=[16, 16]), device="cpu")
    pred = seg.predict(image)
    assert pred.num_windows > 1
    np.testing.assert_array_equal(pred.labels.array[0], mask)
    small, small_mask = ball_image((40, 30), meta, radius_mm=10.0)  # 56 x 40 padded: whole
    assert seg.predict(small).num_windows == 1


def test_slices_of_a_volume_run_whole_several_per_pass() -> None:
    meta = oblique_meta(3)
    image, mask = ball_image((41, 37, 12), meta, radius_mm=14.0)
    net = ShapeRecorder()
    card = threshold_card(roi=[16, 16])
    pred = Segmenter(net, card, device="cpu").predict(image)
    np.testing.assert_array_equal(pred.labels.array[0], mask)
    assert net.shapes == [(12, 1, 48, 48)]  # all 12 slices in one pass, each with context


def test_whole_image_is_recorded_and_validated_as_an_option() -> None:
    card, net = tiny_card(spatial_dims=2, roi=[32, 32])
    seg = Segmenter(net, card, device="cpu", whole_image=False)
    assert seg.provenance()["inference_options"]["whole_image"] is False
    assert seg.options()["whole_image"] is False
    three_d_card = dataclasses.replace(threshold_card(roi=[8, 8, 8]))
    three_d = Segmenter(ThresholdNet(), three_d_card, device="cpu", whole_image=True)
    image, mask = ball_image((20, 18, 12), oblique_meta(3), radius_mm=5.0)
    assert three_d.predict(image).num_windows > 1  # 3D models always use windows


@pytest.mark.parametrize("upsample", ["transposed", "interp"])
def test_whole_image_with_tta_and_either_decoder(upsample: str) -> None:
    from medseg.networks import build_network

    card, _ = tiny_card(spatial_dims=2, roi=[32, 32])
    card = dataclasses.replace(card, network=dataclasses.replace(card.network, upsample=upsample))
    torch.manual_seed(1)
    net = build_network(card.network)
    image = engine.MedImage(np.random.default_rng(4).normal(size=(1, 64, 48)).astype("f4"),
                            oblique_meta(2))
    plain = Segmenter(net, card, device="cpu").predict(image, return_probabilities=True)
    tta = Segmenter(net, card, device="cpu", tta=True).predict(image, return_probabilities=True)
    assert plain.labels.array.shape == tta.labels.array.shape == (1, 64, 48)
    assert plain.probabilities is not None and tta.probabilities is not None
    assert np.isfinite(tta.probabilities.array).all()
