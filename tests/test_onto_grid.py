"""Labels and probabilities brought back from a model grid (medseg.transforms.onto_grid) agree
with the SimpleITK reference (each class resampled linearly, running argmax)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.inference.engine import Prediction, _resample_back, _resample_back_sitk
from medseg.io.image import ImageMeta, MedImage
from medseg.transforms import resample_to_spacing
from medseg.transforms.onto_grid import argmax_onto, axis_aligned_index_map, linear_onto

I3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
C, S = np.cos(0.4), np.sin(0.4)
OBLIQUE = ((C, -S, 0.0), (S * 0.8, C * 0.8, 0.6), (-S * 0.6, -C * 0.6, 0.8))


def _smooth_probabilities(k: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Softmax (or a sigmoid for k == 1) of smooth random logits: many class boundaries."""
    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(size=(k, *shape)), (0,) + (2,) * len(shape)) * 20
    if k == 1:
        return (1 / (1 + np.exp(-logits))).astype(np.float16)
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float16)


def _model_grid(shape: tuple[int, ...], spacing: tuple[float, ...], direction, target
                ) -> tuple[ImageMeta, ImageMeta, tuple[int, ...]]:
    origin = (3.0, -7.0, 11.0)[:len(shape)]
    meta = ImageMeta(spacing=spacing, origin=origin, direction=direction)
    model = resample_to_spacing(MedImage(np.zeros((1, *shape), np.float32), meta), target)
    return meta, model.meta, model.spatial_shape


def _boundary(labels: np.ndarray) -> np.ndarray:
    edges = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        edges[tuple(lo)] |= diff
        edges[tuple(hi)] |= diff
    return edges


@pytest.mark.parametrize(("spacing", "direction", "target", "k", "order"), [
    ((0.8, 0.8, 1.5), OBLIQUE, (2.5, 2.5, 2.5), 3, "F"),  # oblique CT-like, NIfTI order
    ((1.0, 0.7, 3.0), I3, (1.0, 1.0, 1.0), 2, "C"),  # anisotropic, upsampled along one axis
    ((0.9, 1.3, 2.2), OBLIQUE, (1.5, 1.5, 1.5), 4, "C"),
    ((0.8, 0.8, 1.5), I3, (2.5, 2.5, 2.5), 1, "F"),  # a single sigmoid output
])
def test_labels_agree_with_sitk_reference(spacing, direction, target, k, order) -> None:
    meta, model_meta, model_shape = _model_grid((48, 40, 36), spacing, direction, target)
    p = _smooth_probabilities(k, model_shape)
    ref, ref_p = _resample_back_sitk(p, model_meta, meta, (48, 40, 36),
                                     keep_probabilities=True, order=order)
    labels, probs = _resample_back(p, model_meta, meta, (48, 40, 36), keep_probabilities=True,
                                   order=order)
    assert labels.dtype == ref.dtype == np.uint8
    assert (labels.flags.f_contiguous if order == "F" else labels.flags.c_contiguous)
    assert len(np.unique(ref)) == max(k, 2)  # the case has boundaries to get right
    assert (labels == ref).mean() >= 0.999
    # wherever they differ, the voxel sits on the reference's boundary (within one voxel)
    assert _boundary(ref)[labels != ref].all()
    assert probs is not None and ref_p is not None
    np.testing.assert_allclose(probs.astype(np.float32), ref_p.astype(np.float32), atol=2e-3)
    if order == "F":  # each class plane Fortran-ordered: a 4D NIfTI writes as a plain copy
        assert probs[0].flags.f_contiguous


def test_2d_and_outside_the_model_grid_are_filled_like_sitk() -> None:
    src = ImageMeta(spacing=(2.0, 2.0), origin=(0.0, 0.0), direction=((1.0, 0.0), (0.0, 1.0)))
    dst = ImageMeta(spacing=(0.9, 1.1), origin=(-5.0, 3.0), direction=((1.0, 0.0), (0.0, 1.0)))
    p = _smooth_probabilities(3, (30, 25), seed=1)
    ref, ref_p = _resample_back_sitk(p, src, dst, (80, 60), keep_probabilities=True)
    labels = argmax_onto(p, src, dst, (80, 60))
    probs = linear_onto(p, src, dst, (80, 60))
    assert labels is not None and probs is not None and ref_p is not None
    assert (ref_p.sum(0) == 0).any()  # part of the output lies outside the model grid
    assert (labels == ref).mean() >= 0.999
    np.testing.assert_allclose(probs.astype(np.float32), ref_p.astype(np.float32), atol=2e-3)


def test_grids_that_mix_axes_fall_back_to_sitk() -> None:
    src = ImageMeta(spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), direction=OBLIQUE)
    dst = ImageMeta(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=I3)
    assert axis_aligned_index_map(src, dst) is None
    p = _smooth_probabilities(2, (12, 12, 12))
    assert argmax_onto(p, src, dst, (20, 20, 20)) is None
    labels, _ = _resample_back(p, src, dst, (20, 20, 20), keep_probabilities=False)
    ref, _ = _resample_back_sitk(p, src, dst, (20, 20, 20), keep_probabilities=False)
    np.testing.assert_array_equal(labels, ref)


def test_index_map_of_a_model_grid_is_the_spacing_ratio() -> None:
    meta, model_meta, _ = _model_grid((48, 40, 36), (0.8, 0.8, 1.5), OBLIQUE, (2.5, 2.5, 2.5))
    index_map = axis_aligned_index_map(model_meta, meta)
    assert index_map is not None
    np.testing.assert_allclose(index_map[0], [0.32, 0.32, 0.6])
    np.testing.assert_allclose(index_map[1], 0.0, atol=1e-9)


def test_uncertainty_in_slabs_equals_the_whole_volume_formula() -> None:
    p = _smooth_probabilities(3, (40, 30, 20), seed=2)
    p = np.asfortranarray(p.transpose(0, 3, 2, 1)).transpose(0, 3, 2, 1)  # F-ordered planes
    meta = ImageMeta(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=I3)
    pred = Prediction(labels=MedImage(np.zeros((1, 40, 30, 20), np.uint8), meta),
                      probabilities=MedImage(p, meta))
    q = p.astype(np.float64)
    expected = -(q * np.log(np.clip(q, 1e-12, None))).sum(0) / np.log(3)
    u = pred.uncertainty().array
    assert u.shape == (1, 40, 30, 20) and u.dtype == np.float16
    np.testing.assert_allclose(u[0].astype(np.float64), np.clip(expected, 0, 1), atol=2e-3)


def test_unit_interval_nifti_is_uint8_within_half_a_step(tmp_path) -> None:
    import nibabel as nib

    from medseg.io.nifti import write_nifti_unit_interval

    p = _smooth_probabilities(3, (20, 18, 9), seed=3)
    meta = ImageMeta(spacing=(0.8, 0.9, 2.0), origin=(1.0, 2.0, 3.0), direction=I3)
    write_nifti_unit_interval(MedImage(p, meta), tmp_path / "p.nii.gz")
    img = nib.load(str(tmp_path / "p.nii.gz"))
    assert img.get_data_dtype() == np.uint8 and img.shape == (20, 18, 9, 3)
    np.testing.assert_allclose(img.get_fdata(), np.moveaxis(p.astype(np.float64), 0, -1),
                               atol=1 / 510 + 1e-6)
