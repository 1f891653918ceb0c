"""The synthetic CT generator: seeded, physically consistent, lesions of known extent."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.demo.synthetic import LESION_LABEL, LIVER_LABEL, make_ct_study
from medseg.errors import ConfigError

SHAPE = (97, 90, 23)  # odd sizes on purpose
SPACING = (4.1, 4.1, 5.0)


def test_same_seed_same_study_and_different_seed_differs():
    a = make_ct_study(SHAPE, SPACING, seed=5)
    b = make_ct_study(SHAPE, SPACING, seed=5)
    c = make_ct_study(SHAPE, SPACING, seed=6)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.label.array, b.label.array)
    assert a.image.meta == b.image.meta
    assert not np.array_equal(a.label.array, c.label.array)


def test_geometry_dtypes_and_label_names():
    s = make_ct_study(SHAPE, SPACING, seed=2)
    assert s.image.array.shape == s.label.array.shape == (1, *SHAPE)
    assert s.image.array.dtype == np.int16 and s.label.array.dtype == np.uint8
    assert s.image.meta.spacing == SPACING
    assert s.image.meta.same_grid(s.label.meta)
    # the field of view is centred near the world origin with a seeded, non-zero offset
    centre = s.image.meta.index_to_world(np.array([[(n - 1) / 2 for n in SHAPE]]))[0]
    assert np.all(np.abs(centre) <= 25.0) and np.any(np.abs(centre) > 0.5)
    assert s.label.meta.label_names == {0: "background", 1: "liver", 2: "lesion"}
    assert set(np.unique(s.label.array)) == {0, LIVER_LABEL, LESION_LABEL}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lesions_are_separate_hypodense_and_their_volumes_are_exact(seed):
    s = make_ct_study(SHAPE, SPACING, seed=seed, n_lesions=3)
    lesion = s.label.array[0] == LESION_LABEL
    cc, n = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
    assert n == len(s.lesions) == 3
    voxel_ml = np.prod(SPACING) / 1000.0
    assert sorted(r.voxels for r in s.lesions) == sorted(np.bincount(cc.ravel())[1:].tolist())
    for r in s.lesions:
        assert r.volume_ml == pytest.approx(r.voxels * voxel_ml, rel=1e-12)
        # the recorded centre lies inside its own lesion component
        ijk = np.rint(s.image.meta.world_to_index(np.array([r.centre_mm]))[0]).astype(int)
        assert lesion[tuple(ijk)]
    img = s.image.array[0].astype(np.float64)
    liver = s.label.array[0] == LIVER_LABEL
    # hypodense by at least 30 HU on average, liver in the portal-venous range
    assert img[liver].mean() - img[lesion].mean() > 30.0
    assert 90.0 < img[liver].mean() < 140.0
    assert img.min() >= -1024


def test_same_patient_at_two_resolutions():
    coarse = make_ct_study((128, 128, 32), (3.2, 3.2, 5.0), seed=4)
    fine = make_ct_study((256, 256, 64), (1.6, 1.6, 2.5), seed=4)
    for a, b in zip(coarse.lesions, fine.lesions, strict=True):
        assert a.radius_mm == pytest.approx(b.radius_mm, rel=1e-6)
        assert np.allclose(a.centre_mm[:2], b.centre_mm[:2], atol=1e-3)
        assert a.volume_ml == pytest.approx(b.volume_ml, rel=0.15)


def test_progress_reports_every_slice_and_finishes():
    calls: list[tuple[int, int]] = []
    make_ct_study((40, 40, 9), (10.0, 10.0, 10.0), seed=0, n_lesions=1,
                  progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (9, 9) and all(n == 9 for _, n in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_bad_grid_raises_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"positive 3D shape and spacing, got shape \(10, 10\)"):
        make_ct_study((10, 10), (1.0, 1.0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot place 40 separate lesions"):
        make_ct_study((32, 32, 8), (10.0, 10.0, 10.0), n_lesions=40)
