import numpy as np
import pytest
import SimpleITK as sitk

from medseg.io.image import ImageMeta, MedImage
from medseg.model_card import NormalizationConfig
from medseg.transforms import normalize_intensity, resample_onto, resample_to_spacing
from medseg.transforms.intensity import percentile_range


def _meta() -> ImageMeta:
    theta = np.deg2rad(25.0)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]]
    )
    return ImageMeta(spacing=(1.0, 1.5, 2.0), origin=(10.0, -20.0, 5.0),
                     direction=tuple(map(tuple, rot)))


def test_resample_roundtrip_keeps_world_positions():
    meta = _meta()
    shape = (20, 16, 12)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = meta.index_to_world(ijk)
    # a linear function of world position is reproduced exactly by linear interpolation
    field = (world @ np.array([0.3, -0.2, 0.7])).reshape(shape).astype(np.float32)
    img = MedImage(field[None], meta)
    fine = resample_to_spacing(img, (0.5, 0.75, 1.0), order=1)
    assert fine.meta.origin == meta.origin and fine.meta.direction == meta.direction
    fijk = np.stack(np.meshgrid(*[np.arange(s) for s in fine.spatial_shape], indexing="ij"), -1)
    fw = fine.meta.index_to_world(fijk.reshape(-1, 3))
    expected = (fw @ np.array([0.3, -0.2, 0.7])).reshape(fine.spatial_shape)
    inside = (fijk[..., 0] <= 38) & (fijk[..., 1] <= 30) & (fijk[..., 2] <= 22)
    np.testing.assert_allclose(fine.array[0][inside], expected[inside], atol=1e-3)
    back = resample_onto(fine, meta, shape, order=1)
    np.testing.assert_allclose(back.array[0], field, atol=1e-3)


def test_nearest_keeps_labels_and_dtype_and_matches_sitk_physical_point():
    meta = _meta()
    lab = np.zeros((1, 20, 16, 12), np.uint8)
    lab[0, 5:9, 4:7, 3:6] = 2
    out = resample_to_spacing(MedImage(lab, meta), (0.5, 0.5, 0.5), order=0)
    assert out.array.dtype == np.uint8 and set(np.unique(out.array)) == {0, 2}
    # cross-check one voxel centre against SimpleITK's own index->point mapping
    ref = sitk.Image(list(out.spatial_shape), sitk.sitkUInt8)
    ref.SetSpacing(out.meta.spacing)
    ref.SetOrigin(out.meta.origin)
    ref.SetDirection(out.meta.direction_matrix.ravel().tolist())
    np.testing.assert_allclose(
        ref.TransformIndexToPhysicalPoint((13, 11, 9)),
        out.meta.index_to_world(np.array([[13, 11, 9]]))[0], atol=1e-9)


def test_normalisation_schemes():
    x = np.array([[[0.0, 0.0], [10.0, 30.0]]], np.float32)
    z = normalize_intensity(x, NormalizationConfig(scheme="zscore", nonzero=True))
    np.testing.assert_allclose(z[0, 1], [-1.0, 1.0], atol=1e-6)
    ct = normalize_intensity(x, NormalizationConfig(scheme="ct", clip=(0, 20), mean=10, std=5))
    np.testing.assert_allclose(ct[0], [[-2, -2], [0, 2]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("nonzero", [False, True])
def test_integer_percentiles_equal_numpys_on_float32(dtype, nonzero) -> None:
    """The histogram path for 8/16-bit images gives np.percentile's values bit for bit, so a
    model normalises its inputs exactly as it did in training."""
    rng = np.random.default_rng(int(np.dtype(dtype).itemsize) * 10 + nonzero)
    info = np.iinfo(dtype)
    for trial in range(300):
        n = int(rng.integers(1, 3000))
        low, high = max(info.min, -1500), min(info.max, 4000)
        x = rng.integers(low, high, n, endpoint=True).astype(dtype)
        x[rng.random(n) < 0.3] = 0  # background, as in a head or a microscope field
        pcts = (float(rng.choice([0.0, 0.5, 1.0, 2.0, 50.0])),
                float(rng.choice([98.0, 99.5, 99.8, 100.0])))
        config = NormalizationConfig(scheme="percentile", percentiles=pcts, nonzero=nonzero)
        sample = x.astype(np.float32)
        if nonzero and np.any(sample != 0):
            sample = sample[sample != 0]
        lo, hi = np.percentile(sample, pcts)
        assert percentile_range(x, config) == (float(lo), float(max(hi, lo + 1e-6))), trial
