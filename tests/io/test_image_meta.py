import numpy as np
import pytest

from medseg.errors import GeometryError
from medseg.io.image import ImageMeta, MedImage


def _oblique_meta() -> ImageMeta:
    theta = np.deg2rad(17.0)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1.0]]
    )
    return ImageMeta(
        spacing=(0.7, 0.8, 2.5),
        origin=(-120.0, 33.5, 7.25),
        direction=tuple(tuple(r) for r in rot),
    )


def test_affine_roundtrip_lps_and_ras():
    meta = _oblique_meta()
    again = ImageMeta.from_affine(meta.affine)
    assert again.same_grid(meta, atol_mm=1e-9)
    from_ras = ImageMeta.from_affine(meta.affine_ras(), ras=True)
    assert from_ras.same_grid(meta, atol_mm=1e-9)
    # RAS flips the sign of the first two world axes, nothing else
    np.testing.assert_allclose(meta.affine_ras()[:2], -meta.affine[:2])
    np.testing.assert_allclose(meta.affine_ras()[2:], meta.affine[2:])


def test_index_world_inverse():
    meta = _oblique_meta()
    idx = np.array([[0, 0, 0], [10, 3, 2], [5.5, 7.25, 1.0]])
    world = meta.index_to_world(idx)
    np.testing.assert_allclose(world[0], meta.origin)
    np.testing.assert_allclose(meta.world_to_index(world), idx, atol=1e-12)
    # index (1,0,0) moves one spacing along the first direction column
    np.testing.assert_allclose(
        meta.index_to_world(np.array([[1, 0, 0]]))[0] - meta.origin,
        0.7 * meta.direction_matrix[:, 0],
    )


def test_dict_roundtrip():
    meta = _oblique_meta().replace(label_names={1: "anterior", 2: "posterior"})
    assert ImageMeta.from_dict(meta.to_dict()) == meta


def test_bad_geometry_is_rejected():
    with pytest.raises(GeometryError, match="positive"):
        ImageMeta(spacing=(1.0, 0.0, 1.0), origin=(0, 0, 0), direction=tuple(map(tuple, np.eye(3))))
    with pytest.raises(GeometryError, match="channel-first"):
        MedImage(np.zeros((4, 5, 6)), _oblique_meta())
