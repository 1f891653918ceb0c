"""Instance maps from class probabilities: interior-component seeds and distance seeds."""

from __future__ import annotations

import numpy as np

from medseg.inference.instances import instances_from_classes


def _two_touching_discs(shape=(60, 80), radius=12, centres=((30, 28), (30, 50))):
    """Probabilities of a model that saw two touching nuclei as one interior blob (no
    boundary predicted between them): background / interior / boundary."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    discs = [(yy - r) ** 2 + (xx - c) ** 2 <= radius**2 for r, c in centres]
    union = discs[0] | discs[1]
    p = np.zeros((3, *shape), np.float32)
    p[0] = np.where(union, 0.05, 0.95)
    p[1] = np.where(union, 0.9, 0.03)
    p[2] = 1.0 - p[0] - p[1]
    return p, discs


def test_distance_seeds_split_touching_interiors_the_interior_seeds_merge() -> None:
    p, discs = _two_touching_discs()
    labels = p.argmax(0).astype(np.uint8)
    merged = instances_from_classes(labels, p, {"method": "boundary", "seed_threshold": 0.5,
                                                "min_size": 8})
    assert merged.max() == 1  # one interior component: one object
    split = instances_from_classes(labels, p, {"method": "boundary", "seeds": "distance",
                                               "seed_threshold": 0.5, "h": 0.5, "sigma": 1.0,
                                               "min_size": 8})
    assert split.max() == 2 and split.dtype == np.uint16
    for disc in discs:  # each object is mostly one disc
        ids, counts = np.unique(split[disc], return_counts=True)
        assert counts.max() / disc.sum() > 0.85 and ids[np.argmax(counts)] > 0
    assert np.all((split > 0) == (labels > 0))  # every foreground pixel is in an object


def test_distance_seeds_keep_one_round_object_whole() -> None:
    p, (disc, _) = _two_touching_discs(centres=((30, 30), (30, 30)))
    labels = p.argmax(0).astype(np.uint8)
    ids = instances_from_classes(labels, p, {"method": "boundary", "seeds": "distance",
                                             "seed_threshold": 0.5, "min_size": 8})
    assert ids.max() == 1 and np.array_equal(ids > 0, disc)
