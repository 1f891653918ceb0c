"""Fine-tuning at one object scale: every training image is zoomed so that its objects have the
base model's diameter before the fine-tune sees it, and the fine-tuned model zooms each image
it meets by the diameter it estimates there (``object_diameter="auto"``,
:mod:`medseg.inference.diameter`). Cellpose trains at one diameter in the same way.

Microscopy images come at many magnifications: the H&E nuclei of ``dsb2018_brightfield`` are
12 to 52 pixels across in images of one size. A model that meets nuclei twice the size it
learned splits them into fragments, and it merges small ones into clumps. Learning them all
at one size, then sizing each new image, scored higher on H&E images kept out of the
fine-tune (benchmarks/results/finetune_he.txt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from medseg.training.finetune_data import read_pair
from medseg.training.sources import CasePair

#: Zoom factors at most this far from 1 leave an image as it is.
KEEP_WITHIN = 0.05


def median_object_diameter(ids: np.ndarray) -> float | None:
    """The median area-equivalent diameter (``2 sqrt(area / pi)``) of the objects of an
    instance label map, in pixels; ``None`` without objects.

    Examples:
        >>> ids = np.zeros((40, 40), np.uint16); ids[:10, :10] = 1; ids[20:, 20:] = 2
        >>> round(median_object_diameter(ids), 1)
        17.8
    """
    _, counts = np.unique(ids[ids > 0], return_counts=True)
    if counts.size == 0:
        return None
    return float(2.0 * np.sqrt(np.median(counts) / np.pi))


def scaled_pairs(pairs: Sequence[CasePair], target: float, folder: Path, *,
                 max_zoom: float) -> tuple[list[CasePair], dict[str, float]]:
    """``pairs`` with every 2D image whose objects' median diameter is not ``target`` zoomed
    to it (at most ``max_zoom`` either way; images linearly, anti-aliased when shrunk; masks
    by nearest neighbour), written into ``folder`` under the same case ids; and the zoom of
    each case (1.0: kept as it was).

    The pixel size of a zoomed image is scaled with it, so its geometry stays true.
    """
    from skimage.transform import resize

    from medseg.io.training_set import add_training_pair

    out: list[CasePair] = []
    zooms: dict[str, float] = {}
    for pair in pairs:
        image, label = read_pair(pair)
        diameter = (median_object_diameter(np.asarray(label.array[0]))
                    if image.meta.ndim == 2 else None)
        zoom = 1.0 if diameter is None else float(np.clip(target / diameter, 1 / max_zoom,
                                                         max_zoom))
        if abs(zoom - 1.0) <= KEEP_WITHIN:
            out.append(pair)
            zooms[pair.case_id] = 1.0
            continue
        shape = tuple(max(2, round(n * zoom)) for n in image.spatial_shape)
        spacing = tuple(float(s) * n / m for s, n, m in
                        zip(image.meta.spacing, image.spatial_shape, shape, strict=True))
        pixels = resize(np.asarray(image.array, np.float32), (image.num_channels, *shape),
                        order=1, anti_aliasing=zoom < 1, preserve_range=True)
        if np.issubdtype(image.array.dtype, np.integer):
            info = np.iinfo(image.array.dtype)
            pixels = np.clip(np.rint(pixels), info.min, info.max)
        ids = resize(np.asarray(label.array), (1, *shape), order=0, anti_aliasing=False,
                     preserve_range=True)
        written = add_training_pair(
            folder, image.with_array(pixels.astype(image.array.dtype), spacing=spacing),
            label.with_array(ids.astype(label.array.dtype), spacing=spacing),
            stem=pair.case_id, instances=True)
        out.append(replace(pair, image=written.image, label=written.mask, label_is_seg=False))
        zooms[pair.case_id] = round(zoom, 3)
    return out, zooms
