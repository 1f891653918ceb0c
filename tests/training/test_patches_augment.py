"""Reflection-padded patch sampling and batched augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.training.augment import augment_batch
from medseg.training.config import AugmentConfig
from medseg.training.dataset import PreparedCase
from medseg.training.patches import PatchSampler, case_weights, crop_reflect, reflect_indices


@pytest.mark.parametrize(("start", "size", "length"), [(-5, 20, 7), (3, 4, 10), (-30, 80, 9)])
def test_reflect_indices_match_numpy_reflect(start: int, size: int, length: int) -> None:
    pad = 100
    padded = np.pad(np.arange(length), pad, mode="reflect")
    expected = padded[start + pad: start + pad + size]
    np.testing.assert_array_equal(reflect_indices(start, size, length).numpy(), expected)


def test_crop_reflect_equals_numpy_pad_3d(rng: np.random.Generator) -> None:
    a = rng.normal(size=(1, 9, 7, 5)).astype(np.float32)
    out = crop_reflect(torch.from_numpy(a), [-3, 2, -4], [16, 8, 14]).numpy()
    ref = np.pad(a, ((0, 0), (3, 10), (3, 10), (4, 10)), mode="reflect")
    np.testing.assert_array_equal(out, ref[:, 0:16, 5:13, 0:14])


def _case(shape: tuple[int, ...]) -> PreparedCase:
    label = torch.zeros((1, *shape), dtype=torch.uint8)
    label[0, shape[0] - 1, 0, 0] = 1  # a single foreground voxel in a corner
    image = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(1, *shape)
    return PreparedCase("c", image, label, {1: torch.tensor([[shape[0] - 1, 0, 0]])})


def test_sampler_whole_volume_patches_contain_the_image() -> None:
    case = _case((10, 12, 8))
    g = torch.Generator().manual_seed(0)
    sampler = PatchSampler([case], [16, 16, 16], foreground_prob=0.0, generator=g)
    for _ in range(20):
        start = sampler.patch_start(case)
        assert all(-(p - s) <= st <= 0 for st, s, p in zip(start, (10, 12, 8), (16, 16, 16),
                                                          strict=True))
        image, label = sampler.sample([0])
        assert image.shape == (1, 1, 16, 16, 16) and label.dtype == torch.int64
        # every original voxel value appears: the image lies wholly inside the patch
        assert set(case.image.flatten().tolist()) <= set(image.flatten().tolist())


def test_sampler_foreground_patches_hit_the_foreground() -> None:
    case = _case((40, 40, 40))
    g = torch.Generator().manual_seed(1)
    sampler = PatchSampler([case], [8, 8, 8], foreground_prob=1.0, generator=g)
    for _ in range(5):
        _, label = sampler.sample([0])
        assert int(label.sum()) == 1


def test_augment_identity_config_changes_nothing() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, 8, 10, 12)
    label = torch.randint(0, 3, (2, 1, 8, 10, 12))
    out_i, out_l = augment_batch(image, label, AugmentConfig(), g)
    assert torch.equal(out_i, image) and torch.equal(out_l, label)


@pytest.mark.parametrize("shape", [(24, 24), (12, 14, 16)])
def test_augment_moves_image_and_label_together(shape: tuple[int, ...]) -> None:
    """Label = (image > 0) before augmentation must stay so after any spatial change."""
    g = torch.Generator().manual_seed(5)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape],
                           indexing="ij")
    dist2 = sum((gr - s / 2) ** 2 for gr, s in zip(grids, shape, strict=True))
    blob = dist2 < (min(shape) / 3) ** 2
    image = torch.where(blob, 1.0, -1.0).expand(4, 1, *shape).clone()
    label = blob.long().expand(4, 1, *shape).clone()
    cfg = AugmentConfig(flip_axes=list(range(len(shape))), rot90=len(shape) == 2,
                        rotation_deg=30, scale=(0.8, 1.2), affine_prob=1.0,
                        elastic_prob=1.0 if len(shape) == 2 else 0.0, elastic_magnitude=2.0)
    out_i, out_l = augment_batch(image, label, cfg, g)
    assert set(out_l.unique().tolist()) <= {0, 1}
    agree = ((out_i > 0).long() == out_l).float().mean()
    assert agree > 0.97  # only interpolation at the blob's edge may disagree
    assert not torch.equal(out_l, label)


def test_intensity_augmentation_leaves_labels_alone() -> None:
    g = torch.Generator().manual_seed(2)
    image = torch.randn(8, 1, 6, 6, 6)
    label = torch.randint(0, 2, (8, 1, 6, 6, 6))
    cfg = AugmentConfig(gamma=(0.7, 1.5), intensity_scale=(0.75, 1.25), noise_std=0.1,
                        intensity_prob=1.0)
    out_i, out_l = augment_batch(image, label, cfg, g)
    assert torch.equal(out_l, label) and not torch.allclose(out_i, image)


def _displaced_pair(shape: tuple[int, int], offset: tuple[int, int], batch: int = 8
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Image of smooth random structures and a label of those structures displaced by offset."""
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(batch, 1, shape[0] // 8, shape[1] // 8, generator=g)
    smooth = torch.nn.functional.interpolate(noise, size=shape, mode="bilinear",
                                             align_corners=False)
    structures = smooth > 0
    label = torch.roll(structures, shifts=offset, dims=(2, 3)).long()  # L(p) = S(p - offset)
    return torch.where(structures, 1.0, -1.0), label


def _agreement_with_offset(image: torch.Tensor, label: torch.Tensor, offset: tuple[int, int],
                           border: int) -> float:
    expected = torch.roll((image > 0).long(), shifts=offset, dims=(2, 3))
    inner = (slice(None), slice(None), slice(border, -border), slice(border, -border))
    return float((expected[inner] == label[inner]).float().mean())


def test_label_offset_is_kept_exactly_under_flips_and_rot90() -> None:
    """The label stays the structures displaced by the same vector in the output frame."""
    offset = (1, -2)
    image, label = _displaced_pair((48, 48), offset)
    cfg = AugmentConfig(flip_axes=[0, 1], rot90=True, label_offset=list(offset))
    out_i, out_l = augment_batch(image, label, cfg, torch.Generator().manual_seed(3))
    assert not torch.equal(out_i, image)
    assert _agreement_with_offset(out_i, out_l, offset, border=5) == 1.0
    # without the setting, mirroring flips the offset: the same check fails
    plain = AugmentConfig(flip_axes=[0, 1], rot90=True)
    out_i, out_l = augment_batch(image, label, plain, torch.Generator().manual_seed(3))
    assert _agreement_with_offset(out_i, out_l, offset, border=5) < 0.95


def test_label_offset_is_kept_under_rotation_zoom_and_elastic() -> None:
    offset = (2, 1)
    image, label = _displaced_pair((64, 64), offset)
    cfg = AugmentConfig(flip_axes=[0, 1], rot90=True, rotation_deg=15, scale=(0.9, 1.1),
                        affine_prob=1.0, elastic_prob=1.0, elastic_sigma=0.33,
                        elastic_magnitude=3.0, label_offset=list(offset))
    out_i, out_l = augment_batch(image, label, cfg, torch.Generator().manual_seed(4))
    # only interpolation at structure edges (and first-order terms of the field) may disagree
    assert _agreement_with_offset(out_i, out_l, offset, border=8) > 0.97


def test_label_offset_must_match_dimensions() -> None:
    image, label = _displaced_pair((16, 16), (0, 1), batch=1)
    with pytest.raises(ConfigError, match="label_offset"):
        augment_batch(image, label, AugmentConfig(label_offset=[1.0, 0.0, 0.0]),
                      torch.Generator().manual_seed(0))


def test_area_sampling_draws_cases_in_proportion_to_their_pixels() -> None:
    small = PreparedCase("small", torch.zeros(1, 16, 16),
                         torch.zeros(1, 16, 16, dtype=torch.uint8), {})
    large = PreparedCase("large", torch.zeros(1, 48, 48),
                         torch.zeros(1, 48, 48, dtype=torch.uint8), {})
    weights = case_weights([small, large], "area")
    assert weights.tolist() == pytest.approx([0.1, 0.9])  # 256 vs 2304 pixels
    for sampling, w in (("area", weights), ("uniform", case_weights([small, large], "uniform"))):
        sampler = PatchSampler([small, large], [8, 8], foreground_prob=0.0,
                               generator=torch.Generator().manual_seed(0), weights=w)
        counts = np.bincount(torch.cat([_draw(sampler) for _ in range(500)]).numpy(),
                             minlength=2) / 2000
        expected = [0.1, 0.9] if sampling == "area" else [0.5, 0.5]
        assert counts.tolist() == pytest.approx(expected, abs=0.03), sampling
    with pytest.raises(ValueError, match="case sampling"):
        case_weights([small], "pixels")
    with pytest.raises(ValueError, match="2 weights for 1 cases"):
        PatchSampler([small], [8, 8], foreground_prob=0.0, generator=torch.Generator(),
                     weights=weights)


def test_weighted_draws_resume_from_the_generator_state() -> None:
    cases = [PreparedCase(str(n), torch.zeros(1, n, n), torch.zeros(1, n, n, dtype=torch.uint8),
                          {}) for n in (8, 16, 24)]
    g = torch.Generator().manual_seed(5)
    sampler = PatchSampler(cases, [8, 8], foreground_prob=0.0, generator=g,
                           weights=case_weights(cases, "area"))
    _draw(sampler)
    state = g.get_state()  # what a checkpoint keeps
    after = [_draw(sampler).tolist() for _ in range(5)]
    g.set_state(state)
    assert [_draw(sampler).tolist() for _ in range(5)] == after


def _draw(sampler: PatchSampler) -> torch.Tensor:
    """The case indices :meth:`PatchSampler.next_batch` draws for one batch of 4."""
    sizes = []
    original = sampler.sample

    def record(indices):
        sizes.extend(indices)
        return original(indices)

    sampler.sample = record  # type: ignore[method-assign]
    try:
        sampler.next_batch(4)
    finally:
        sampler.sample = original  # type: ignore[method-assign]
    return torch.as_tensor(sizes)


def test_config_refuses_an_unknown_case_sampling() -> None:
    from medseg.training.config import DataConfig, TrainConfig

    with pytest.raises(ConfigError, match="case_sampling"):
        TrainConfig(name="x", data=DataConfig(source="folder2d", path="."), case_sampling="pixel")
