"""Instance label maps from a model's classes: objects numbered 1..N (scikit-image, SciPy).

Three methods, matching how instance models are trained (:mod:`medseg.training.instances`):

* ``"boundary"`` (classes background / interior / boundary): seeds are the connected regions
  where the interior wins; each seed grows by a watershed on the interior probability over
  the pixels where the object (interior or boundary) wins. Touching objects separated by a
  predicted boundary stay apart even where the boundary is not closed.
  With ``"seeds": "distance"`` the seeds are instead the h-maxima (height ``h`` pixels) of the
  smoothed distance to the edge of the interior (interior probability above
  ``seed_threshold``), and the watershed runs on that distance: one seed per roundish
  interior even where two touching interiors were not split by a predicted boundary (the
  marker-controlled watershed of classical nucleus segmentation).
* ``"centre"`` (classes background / interior / boundary / centre, the centre being the
  deeper half of each interior): seeds are the connected centres (``centre_threshold``,
  default 0.5), plus any interior component without one; the watershed runs on the interior
  and centre probabilities over the foreground. Two nuclei whose interiors touch keep apart
  by their centres, learned rather than guessed from the interior's shape.
* ``"components"`` (classes background / object, with gaps drawn between touching objects):
  connected components of the object class, grown back by one pixel into the gap they were
  trained to leave (``skimage.segmentation.expand_labels``).

Objects smaller than ``min_size`` pixels are dropped; ids are consecutive. The map is uint16
up to 65535 objects, uint32 beyond.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Objects smaller than this (pixels/voxels) are dropped: the smallest DSB2018 nucleus is 21 px.
DEFAULT_MIN_SIZE = 8


def instances_from_classes(labels: np.ndarray, probabilities: np.ndarray | None,
                           spec: dict[str, Any]) -> np.ndarray:
    """Instance ids (uint16/uint32, 0 = background) from a class map and optional softmax.

    Args:
        labels: Class map (spatial shape), as the engine's argmax gives it.
        probabilities: ``(K, *spatial)`` softmax (float16/float32), for the watershed's
            relief; without it the distance to the background is used.
        spec: The model card's ``instances`` entry: ``{"method": "boundary" | "centre" |
            "components", "min_size": int, "seed_threshold": float,
            "foreground_threshold": float, "centre_threshold": float,
            "seeds": "interior" | "distance", "h": float, "sigma": float, "max_grow": float,
            "min_score": float}``. The thresholds (``"boundary"``/``"centre"``, with
            probabilities only) replace the argmax: the interior is where the interior
            probability (for ``"centre"``: classes 1 and 3 together) exceeds
            ``seed_threshold``, the objects where background's is below
            ``1 - foreground_threshold``; the interior is always kept within the objects.
            ``"boundary"`` seeds are the interior's components, or with ``"seeds":
            "distance"`` the h-maxima (``h``, default 0.5 px) of the interior's distance map
            smoothed by a Gaussian of ``sigma`` (default 1 px). ``"centre"`` seeds are the
            centres (probability above ``centre_threshold``, default 0.5) inside the
            interior. ``max_grow`` (px, not ``"components"``) keeps objects within that
            distance of the interior (a boundary ring is 1-2 px thick; foreground further
            out is glow, not a rim). ``min_score`` (needs ``probabilities``) drops objects
            whose mean foreground probability (1 - background) is below it, scored after
            they have grown: without ``max_grow`` a real nucleus that flooded into glow
            scores low and goes too, so use the two together. Both are off when absent.

    Raises:
        ValueError: Unknown method.
    """
    from scipy import ndimage
    from skimage.segmentation import expand_labels, relabel_sequential, watershed

    method = spec.get("method", "boundary")
    min_size = int(spec.get("min_size", DEFAULT_MIN_SIZE))
    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    if method in ("boundary", "centre"):
        centre = method == "centre"
        interior_p = None
        if probabilities is not None:
            interior_p = np.asarray(probabilities[1], np.float32)
            if centre:  # the centre is the interior's core: interior = classes 1 and 3
                interior_p = interior_p + np.asarray(probabilities[3], np.float32)
        interior = ((labels == 1) | (labels == 3)) if centre else labels == 1
        foreground = labels > 0
        if interior_p is not None and "seed_threshold" in spec:
            interior = interior_p > float(spec["seed_threshold"])
        if probabilities is not None and "foreground_threshold" in spec:
            foreground = (1.0 - np.asarray(probabilities[0], np.float32)
                          ) > float(spec["foreground_threshold"])
        # seeds outside the foreground would be dropped by the watershed's mask (and a
        # centre there would leave its interior without a seed): the interior is object
        interior &= foreground
        if spec.get("max_grow") is not None:
            # objects reach at most max_grow px past the interior: a boundary ring is 1-2 px
            # thick, so anything further out is out-of-focus glow called "object", not a rim
            reach = ndimage.distance_transform_edt(~interior)
            foreground &= reach <= float(spec["max_grow"])
        if centre:
            seeds = _centre_seeds(labels, probabilities, interior, spec)
            relief = (-(interior_p + np.asarray(probabilities[3], np.float32))
                      if interior_p is not None
                      else -ndimage.distance_transform_edt(foreground).astype(np.float32))
        elif spec.get("seeds", "interior") == "distance":
            from skimage.morphology import h_maxima

            distance = ndimage.distance_transform_edt(interior).astype(np.float32)
            sigma = float(spec.get("sigma", 1.0))
            smooth = ndimage.gaussian_filter(distance, sigma)
            # h-maxima per interior component, on its box grown by the smoothing's reach: the
            # same maxima as over the whole image (background between components is a valley
            # deeper than h), at the cost of the objects' area instead of the image's
            parts, _ = ndimage.label(interior, structure=structure)
            pad = int(math.ceil(4 * sigma)) + 2
            peaks = np.zeros(interior.shape, bool)
            for index, box in enumerate(ndimage.find_objects(parts), start=1):
                if box is None:
                    continue
                box = tuple(slice(max(b.start - pad, 0), b.stop + pad) for b in box)
                peaks[box] |= h_maxima(smooth[box], float(spec.get("h", 0.5))).astype(bool) \
                    & (parts[box] == index)
            seeds, _ = ndimage.label(peaks, structure=structure)
            relief = -distance
        else:
            seeds, _ = ndimage.label(interior, structure=structure)
            relief = (-interior_p if interior_p is not None
                      else -ndimage.distance_transform_edt(foreground).astype(np.float32))
        ids = watershed(relief, seeds, mask=foreground)
    elif method == "components":
        ids, _ = ndimage.label(labels == 1, structure=structure)
        ids = expand_labels(ids, distance=1)
    else:
        raise ValueError(f"unknown instance method {method!r}")
    if spec.get("min_score") is not None and probabilities is not None and ids.max() > 0:
        # an object's score: its mean foreground probability (1 - background); glow and
        # texture called "object" at 0.5-0.7 are dropped, real nuclei score about 0.95
        score = ndimage.mean(1.0 - np.asarray(probabilities[0], np.float32), ids,
                             np.arange(1, ids.max() + 1))
        weak = np.concatenate([[False], np.asarray(score) < float(spec["min_score"])])
        ids = np.where(weak[ids], 0, ids)
    if min_size > 1 and ids.max() > 0:
        small = np.bincount(ids.ravel()) < min_size
        small[0] = False
        ids = np.where(small[ids], 0, ids)
    ids, _, _ = relabel_sequential(ids)
    dtype = np.uint16 if ids.max() <= np.iinfo(np.uint16).max else np.uint32
    return ids.astype(dtype, copy=False)


#: Instance settings measured in pixels (lengths; ``min_size`` is an area or volume).
PIXEL_LENGTHS = ("h", "sigma", "max_grow")


def scaled_instance_spec(spec: dict[str, Any], scale: float, ndim: int) -> dict[str, Any]:
    """``spec`` for a grid with ``scale`` pixels per pixel of the grid its settings were
    chosen on (2 for an image shown at twice the model's magnification): the pixel lengths
    (``h``, ``sigma``, ``max_grow``) times ``scale``, ``min_size`` (and the default minimum)
    times ``scale ** ndim``. ``scale`` 1 returns ``spec`` itself.

    Examples:
        >>> scaled_instance_spec({"method": "boundary", "max_grow": 3, "min_size": 32}, 2.0, 2)
        {'method': 'boundary', 'max_grow': 6.0, 'min_size': 128}
    """
    if scale == 1.0:
        return spec
    out = dict(spec)
    for key in PIXEL_LENGTHS:
        if out.get(key) is not None:
            out[key] = float(out[key]) * scale
    out["min_size"] = max(1, round(int(spec.get("min_size", DEFAULT_MIN_SIZE)) * scale**ndim))
    return out


def _centre_seeds(labels: np.ndarray, probabilities: np.ndarray | None, interior: np.ndarray,
                  spec: dict[str, Any]) -> np.ndarray:
    """Watershed seeds of the ``"centre"`` method: the connected centres (centre probability
    above ``centre_threshold``, default 0.5, or the argmax's class 3) inside the interior, and
    each interior component that holds no centre as a seed of its own (a small object whose
    centre the model missed is still an object)."""
    from scipy import ndimage
    from skimage.segmentation import relabel_sequential

    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    if probabilities is not None:
        core = np.asarray(probabilities[3], np.float32) > float(spec.get("centre_threshold", 0.5))
    else:
        core = labels == 3
    seeds, n = ndimage.label(core & interior, structure=structure)
    parts, _ = ndimage.label(interior, structure=structure)
    seeded = np.zeros(int(parts.max()) + 1, bool)
    seeded[np.unique(parts[seeds > 0])] = True
    orphan = (parts > 0) & ~seeded[parts]
    seeds, _, _ = relabel_sequential(np.where(orphan, parts + n, seeds))  # ids 1..N
    return seeds
