"""Fine-tuning at one object scale (``medseg.training.finetune_scale``): training images are
zoomed so that their objects have the base model's diameter, with their geometry kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medseg.io import read_image
from medseg.training.finetune_data import index_folder
from medseg.training.finetune_scale import median_object_diameter, scaled_pairs


def _discs(radius: float, shape=(120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """A grey uint8 image of bright discs of ``radius`` on black, and their ids."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = np.zeros(shape, np.uint16)
    centres = [(30, 40), (30, 115), (90, 40), (90, 115)]
    for n, (cy, cx) in enumerate(centres, 1):
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = n
    return np.where(ids > 0, 200, 10).astype(np.uint8), ids


def test_images_are_zoomed_to_the_target_diameter_with_their_geometry(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for stem, radius in (("big", 20.0), ("right", 10.5)):
        grey, ids = _discs(radius)
        Image.fromarray(grey).save(folder / "images" / f"{stem}.png")
        Image.fromarray(ids).save(folder / "masks" / f"{stem}.png")
    pairs = index_folder(folder)
    out, zooms = scaled_pairs(pairs, 21.0, tmp_path / "scaled", max_zoom=2.0)
    assert [p.case_id for p in out] == ["big", "right"]  # the same cases, in order
    assert zooms["right"] == 1.0 and out[1] == pairs[1]  # already the size: not rewritten
    assert zooms["big"] == round(21.0 / median_object_diameter(_discs(20.0)[1]), 3)
    image, ids = read_image(out[0].image), read_image(out[0].label)
    z = zooms["big"]
    assert image.spatial_shape == ids.spatial_shape == (round(160 * z), round(120 * z))
    assert image.array.dtype == np.uint8 and ids.array.dtype == np.uint16
    # every disc is still one object, at the target size, where it was (scaled)
    assert sorted(np.unique(ids.array))[1:] == [1, 2, 3, 4]
    assert abs(median_object_diameter(np.asarray(ids.array[0])) - 21.0) < 1.5
    cx, cy = (np.argwhere(np.asarray(ids.array[0]) == 1).mean(0) + 0.5) / z - 0.5
    assert abs(cx - 40) < 1.0 and abs(cy - 30) < 1.0  # array axes (x, y) as read
    # the image's bright pixels are the mask's
    assert np.mean((np.asarray(image.array[0]) > 100) == (np.asarray(ids.array[0]) > 0)) > 0.97
