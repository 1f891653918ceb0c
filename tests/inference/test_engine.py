"""Segmenter: model-card preprocessing, exact output grid, resampling back, TTA, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import (
    ThresholdNet,
    ball_image,
    dice,
    oblique_meta,
    threshold_card,
    tiny_card,
)

from medseg.errors import CancelledError, ModelError
from medseg.inference import PostprocessConfig, Segmenter, engine
from medseg.inference.preprocess import window_normalizer
from medseg.io import MedImage, Provenance
from medseg.model_card import NormalizationConfig
from medseg.transforms import normalize_intensity


def test_from_file_predicts_on_the_exact_input_grid(tiny_model_file: Path) -> None:
    segmenter = Segmenter.from_file(tiny_model_file, device="cpu")
    meta = oblique_meta()
    image = MedImage(np.random.default_rng(0).normal(100, 20, (1, 33, 34, 35)).astype("f4"),
                     meta)
    pred = segmenter.predict(image, return_probabilities=True)
    assert pred.labels.array.shape == (1, 33, 34, 35) and pred.labels.array.dtype == np.uint8
    assert pred.labels.meta.same_grid(meta, atol_mm=1e-6)
    assert pred.labels.meta.label_names == {1: "anterior", 2: "posterior"}
    assert set(np.unique(pred.labels.array)) <= {0, 1, 2}
    probs = pred.probabilities
    assert probs is not None and probs.array.shape == (3, 33, 34, 35)
    assert probs.array.dtype == np.float16
    np.testing.assert_allclose(probs.array.astype("f4").sum(0), 1.0, atol=5e-3)
    top2 = np.sort(probs.array.astype("f4"), axis=0)[-2:]
    clear = top2[1] - top2[0] > 4e-3  # float16 rounding can swap near-ties
    np.testing.assert_array_equal(probs.array.argmax(0)[clear], pred.labels.array[0][clear])
    assert set(pred.timings) == {"preprocess", "infer", "resample", "postprocess", "fit"}
    voxel_ml = float(np.prod(meta.spacing)) / 1000
    assert pred.volumes_ml["anterior"] == pytest.approx(
        (pred.labels.array == 1).sum() * voxel_ml, abs=1e-6)
    prov = segmenter.provenance()
    assert prov["model_name"] == "tiny" and len(prov["weights_sha256"]) == 64
    assert prov["model_card_sha256"] == segmenter.card.hash() and prov["device"] == "cpu"


@pytest.mark.parametrize("ndim", [2, 3])
def test_threshold_model_recovers_a_ball_on_an_oblique_grid(ndim: int) -> None:
    shape = (41, 37, 30)[:ndim]
    meta = oblique_meta(ndim)
    image, mask = ball_image(shape, meta)
    roi = [16] * ndim
    segmenter = Segmenter(ThresholdNet(), threshold_card(roi=roi), device="cpu")
    pred = segmenter.predict(image)
    np.testing.assert_array_equal(pred.labels.array[0], mask)  # voxel-exact through windows


def test_resampling_to_model_spacing_and_back_keeps_the_grid() -> None:
    meta = oblique_meta(spacing=(0.8, 0.9, 1.3))
    image, mask = ball_image((45, 40, 28), meta, radius_mm=10.0)
    card = threshold_card(roi=[16, 16, 16], target_spacing=[1.6, 1.6, 2.0])
    pred = Segmenter(ThresholdNet(), card, device="cpu").predict(image)
    assert pred.labels.spatial_shape == (45, 40, 28)
    assert pred.labels.meta.same_grid(meta, atol_mm=1e-6)
    assert dice(pred.labels.array[0], mask) > 0.93  # the ball survives 2x down and back up
    centre_shift = np.abs(np.argwhere(pred.labels.array[0]).mean(0) - np.argwhere(mask).mean(0))
    assert centre_shift.max() < 0.5  # no half-voxel drift between the grids
    # the prediction names the grid the network ran on: the card's spacing over the same extent
    assert pred.model_grid == {"shape": [round(45 * 0.8 / 1.6), round(40 * 0.9 / 1.6),
                                         round(28 * 1.3 / 2.0)], "spacing": [1.6, 1.6, 2.0]}


@pytest.mark.parametrize("batch_limit", [0, 1 << 21])  # mirrorings one by one / batched
def test_tta_averages_mirrored_windows(tiny_model_file: Path, batch_limit: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_TTA_BATCH_VOXELS", batch_limit)
    image = MedImage(np.random.default_rng(4).normal(size=(1, 16, 16, 16)).astype("f4"),
                     oblique_meta())
    plain = Segmenter.from_file(tiny_model_file, device="cpu", margin=0, amp=False)
    mirrored = Segmenter.from_file(tiny_model_file, device="cpu", margin=0, tta=True,
                                   amp=False)
    p_tta = mirrored.predict(image, return_probabilities=True).probabilities
    x = torch.from_numpy(normalize_intensity(image.array, plain.card.normalization))[None]
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    with torch.no_grad():
        logits = sum(plain.model(x.flip(f)).flip(f) if f else plain.model(x) for f in flips) / 8
    expected = torch.softmax(logits[0], 0).numpy()
    assert p_tta is not None
    np.testing.assert_allclose(p_tta.array.astype("f4"), expected, atol=2e-3)


def test_bf16_autocast_agrees_with_fp32(tiny_model_file: Path) -> None:
    image = MedImage(np.random.default_rng(5).normal(size=(1, 30, 26, 20)).astype("f4"),
                     oblique_meta())
    fp32 = Segmenter.from_file(tiny_model_file, device="cpu", amp=False).predict(image)
    bf16 = Segmenter.from_file(tiny_model_file, device="cpu", amp=True).predict(image)
    agreement = (fp32.labels.array == bf16.labels.array).mean()
    assert agreement > 0.95  # random weights give near-ties; trained models agree more


@pytest.mark.parametrize("config", [
    NormalizationConfig(scheme="zscore"),
    NormalizationConfig(scheme="zscore", nonzero=True, clip=(-50.0, 400.0)),
    NormalizationConfig(scheme="ct", clip=(-100.0, 300.0), mean=40.0, std=80.0),
])
def test_window_normalisation_equals_whole_image(config: NormalizationConfig) -> None:
    rng = np.random.default_rng(6)
    array = rng.normal(100, 150, (2, 20, 18, 25)).astype("f4")
    array[:, :5] = 0
    normalise = window_normalizer(array, config)
    whole = normalize_intensity(array, config)
    np.testing.assert_allclose(normalise(array[:, 3:15, 2:9]), whole[:, 3:15, 2:9], atol=2e-5)


def test_wrong_input_raises_model_error_naming_the_file(tiny_model_file: Path) -> None:
    segmenter = Segmenter.from_file(tiny_model_file, device="cpu")
    two_channel = MedImage(np.zeros((2, 20, 20, 20), "f4"), oblique_meta(path="/d/ct.nii.gz"))
    with pytest.raises(ModelError, match=r"^/d/ct.nii.gz: model 'tiny' expects 1 channel\(s\) "
                                         "but the image has 2$"):
        segmenter.predict(two_channel)
    flat = MedImage(np.zeros((1, 20, 20), "f4"), oblique_meta(2, path="/d/x.png"))
    with pytest.raises(ModelError, match="model 'tiny' is 3D but the image is 2D"):
        segmenter.predict(flat)
    fragment = MedImage(np.zeros((1, 20, 20, 1), "f4"), oblique_meta().replace(
        provenance=Provenance(path="/d/series", format="dicom", files=("/d/series/7.dcm",))))
    with pytest.raises(ModelError, match=r"is 3D but the image is a single slice \(shape "
                                         r"\(20, 20, 1\)\) \(a one-file DICOM series"):
        segmenter.predict(fragment)
    with pytest.raises(CancelledError):
        segmenter.predict(MedImage(np.zeros((1, 20, 20, 20), "f4"), oblique_meta()),
                          should_cancel=lambda: True)


def test_unknown_model_names_the_shipped_models() -> None:
    with pytest.raises(ModelError, match=r"unknown model name: 'no-such-model' \(shipped models"):
        Segmenter.from_file("no-such-model")
    with pytest.raises(ModelError, match="model file not found: '/nope/m.safetensors'"):
        Segmenter.from_file("/nope/m.safetensors")


def test_postprocessing_keeps_the_largest_component_and_drops_small_ones() -> None:
    meta = oblique_meta(spacing=(1.0, 1.0, 1.0))
    image, mask = ball_image((40, 40, 40), meta, radius_mm=8.0)
    array = image.array.copy()
    array[0, 2:4, 2:4, 2:4] = 1.0  # a stray 8-voxel (0.008 mL) blob
    card = threshold_card(roi=[24, 24, 24])
    raw = Segmenter(ThresholdNet(), card, device="cpu").predict(image.with_array(array))
    assert raw.labels.array.sum() == mask.sum() + 8
    for post in (PostprocessConfig(keep_largest=True), PostprocessConfig(min_size_ml=0.01)):
        pred = Segmenter(ThresholdNet(), card, device="cpu", postprocess=post).predict(
            image.with_array(array))
        np.testing.assert_array_equal(pred.labels.array[0], mask)
        assert pred.volumes_ml["ball"] == pytest.approx(mask.sum() / 1000, abs=1e-9)


def test_2d_model_on_2d_image() -> None:
    card, net = tiny_card(spatial_dims=2, roi=[32, 32])
    image = MedImage(np.random.default_rng(8).normal(size=(1, 50, 41)).astype("f4"),
                     oblique_meta(2))
    pred = Segmenter(net, card, device="cpu").predict(image)
    assert pred.labels.array.shape == (1, 50, 41)
    assert pred.labels.meta.same_grid(image.meta, atol_mm=1e-6)


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny_model_file: Path) -> None:
    image = MedImage(np.random.default_rng(11).normal(size=(1, 40, 36, 30)).astype("f4"),
                     oblique_meta())
    cpu = Segmenter.from_file(tiny_model_file, device="cpu", amp=False).predict(
        image, return_probabilities=True)
    gpu = Segmenter.from_file(tiny_model_file, device="cuda", amp=False).predict(
        image, return_probabilities=True)
    assert cpu.probabilities is not None and gpu.probabilities is not None
    np.testing.assert_allclose(gpu.probabilities.array.astype("f4"),
                               cpu.probabilities.array.astype("f4"), atol=2e-3)
    assert (gpu.labels.array == cpu.labels.array).mean() > 0.999


def test_group_norm_swap_keeps_the_network_function() -> None:
    card, net = tiny_card()
    net.eval()
    reference = copy.deepcopy(net)
    engine.instance_norm_as_group_norm(net)
    assert not any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert net.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 1, 16, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), atol=1e-4, rtol=1e-4)


def test_uncertainty_is_normalised_entropy(tiny_model_file: Path) -> None:
    segmenter = Segmenter.from_file(tiny_model_file, device="cpu", amp=False)
    image = MedImage(np.random.default_rng(13).normal(size=(1, 20, 18, 16)).astype("f4"),
                     oblique_meta())
    with pytest.raises(ModelError, match="return_probabilities=True"):
        segmenter.predict(image).uncertainty()
    pred = segmenter.predict(image, return_probabilities=True)
    u = pred.uncertainty()
    assert pred.probabilities is not None
    p = pred.probabilities.array.astype("f8")
    expected = -(p * np.log(np.clip(p, 1e-12, None))).sum(0) / np.log(3)
    assert u.array.shape == (1, 20, 18, 16) and u.array.dtype == np.float16
    assert u.meta.same_grid(image.meta)
    np.testing.assert_allclose(u.array[0].astype("f8"), expected, atol=2e-3)


@pytest.mark.parametrize("target_spacing", [None, [1.6, 1.6, 2.0]])  # direct / resampled back
def test_fortran_ordered_input_gives_the_same_labels_in_its_layout(
        target_spacing: list[float] | None) -> None:
    """NIfTI volumes arrive first-axis-fastest; the labels come back in that layout (a plain
    copy to write) and equal those of the same image in C order."""
    meta = oblique_meta(spacing=(0.8, 0.9, 1.3))
    image, _ = ball_image((45, 40, 28), meta, radius_mm=10.0)
    fortran = MedImage(np.asfortranarray(image.array[0])[None], meta)
    assert not fortran.array[0].flags.c_contiguous
    card = threshold_card(roi=[16, 16, 16], target_spacing=target_spacing)
    segmenter = Segmenter(ThresholdNet(), card, device="cpu")
    c_labels = segmenter.predict(image).labels.array[0]
    f_labels = segmenter.predict(fortran).labels.array[0]
    assert f_labels.flags.f_contiguous and c_labels.flags.c_contiguous
    np.testing.assert_array_equal(f_labels, c_labels)


class _DisplacedThresholdNet(ThresholdNet):
    """Draws its labels ``offset`` voxels off the structures: ``out(p) = threshold(x(p - d))``."""

    def __init__(self, offset: tuple[int, int]) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.roll(x, shifts=self.offset, dims=(2, 3)))


@pytest.mark.parametrize("batch_limit", [0, 1 << 21])
def test_tta_keeps_a_trained_label_offset(batch_limit: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Mirroring a model trained with ``augment.label_offset`` must not blur its offset."""
    monkeypatch.setattr(engine, "_TTA_BATCH_VOXELS", batch_limit)
    offset = (1, -2)
    rng = np.random.default_rng(9)
    image = MedImage(rng.uniform(0, 1, (1, 40, 36)).astype("f4"), oblique_meta(2))
    net = _DisplacedThresholdNet(offset)
    inner = (slice(None), slice(6, -6), slice(6, -6))  # roll wraps at the window edges

    def probabilities(card_offset: list[float], tta: bool) -> np.ndarray:
        card = threshold_card(roi=[48, 48])
        card.label_offset = card_offset
        pred = Segmenter(net, card, device="cpu", tta=tta, amp=False).predict(
            image, return_probabilities=True)
        assert pred.probabilities is not None
        return pred.probabilities.array.astype("f4")[inner]

    plain = probabilities(list(map(float, offset)), tta=False)
    np.testing.assert_allclose(probabilities(list(map(float, offset)), tta=True), plain,
                               atol=2e-3)
    # without the card's offset the mirrorings disagree by 2 * offset: the check can fail
    assert np.abs(probabilities([], tta=True) - plain).max() > 0.2


def test_translate_moves_by_fractions_and_whole_voxels() -> None:
    t = torch.arange(6, dtype=torch.float32).view(1, 6)
    np.testing.assert_allclose(engine.translate(t, 1, 2.0).numpy(), [[0, 0, 0, 1, 2, 3]])
    np.testing.assert_allclose(engine.translate(t, 1, -0.5).numpy(),
                               [[0.5, 1.5, 2.5, 3.5, 4.5, 5]])
