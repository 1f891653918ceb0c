"""Training targets for instance segmentation, made from instance-id label maps.

Label maps of instance data (DSB2018 nuclei) hold one id per object. Augmentation moves the ids
with nearest-neighbour sampling, so targets are made afterwards, from the augmented ids:

* ``"boundary"``: three classes, background (0), interior (1) and boundary (2): an object
  pixel is boundary when a pixel of its 3x3 neighbourhood belongs to another id (or to the
  background). Touching objects are then separated by two boundary pixels; instances come back
  as connected interiors grown over the foreground by a watershed
  (:func:`medseg.inference.instances.instances_from_classes`).
* ``"centre"``: the boundary classes plus a fourth, centre (3): the interior pixels whose
  distance to their object's edge is at least half that object's largest (a quantised
  distance map, as in the Deep Watershed Transform, Bai & Urtasun 2017). Touching objects
  whose interiors merge still have separate centres, which seed the watershed
  (:func:`medseg.inference.instances.instances_from_classes`, method ``"centre"``).
* ``"gap"``: two classes, as in the U-Net paper: objects with a background gap drawn where two
  objects touch (the pixels of an object whose 3x3 neighbourhood holds another object's id).
  Paired with the paper's weight map (:func:`unet_weight_map`), which makes those thin gaps
  expensive to miss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def _neighbourhood_max(x: torch.Tensor) -> torch.Tensor:
    """Per pixel, the largest value in its 3x3 (or 3x3x3) neighbourhood of ``(B, 1, *S)``
    float ``x``, with replicated borders (so the image edge does not count as a neighbour)."""
    dims = x.dim() - 2
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    return pool(F.pad(x, [1] * (2 * dims), mode="replicate"), 3, stride=1)


def instance_targets(ids: torch.Tensor, mode: str) -> torch.Tensor:
    """Class targets ``(B, 1, *S)`` int64 from instance ids ``(B, 1, *S)`` (see module doc).

    Examples:
        >>> ids = torch.zeros(1, 1, 6, 6, dtype=torch.long)
        >>> ids[0, 0, 1:5, 1:3] = 1; ids[0, 0, 1:5, 3:5] = 2
        >>> instance_targets(ids, "gap")[0, 0].tolist()[2]
        [0, 1, 0, 0, 1, 0]
        >>> instance_targets(ids, "boundary")[0, 0].tolist()[2]
        [0, 2, 2, 2, 2, 0]
        >>> ids = torch.zeros(1, 1, 9, 9, dtype=torch.long); ids[0, 0, 1:8, 1:8] = 1
        >>> instance_targets(ids, "centre")[0, 0].tolist()[4]
        [0, 2, 1, 3, 3, 3, 1, 2, 0]
    """
    x = ids.float()
    fg = ids > 0
    high = _neighbourhood_max(x)
    if mode in ("boundary", "centre"):
        low = -_neighbourhood_max(-x)
        edge = fg & ((high != x) | (low != x))
        classes = torch.where(edge, 2, fg.long()).long()
        return classes if mode == "boundary" else _with_centres(ids, classes)
    if mode == "gap":
        # another object's id nearby: the neighbourhood's largest id differs, or its smallest
        # non-background id does (background counted as 1e9, so a background pixel alone
        # does not make a gap), in 2D and in 3D alike
        other_low = -_neighbourhood_max(-torch.where(fg, x, torch.full_like(x, 1e9)))
        touching = fg & ((high != x) | ((other_low != x) & (other_low < 1e9)))
        return (fg & ~touching).long()
    raise ValueError(f"unknown instance target mode {mode!r}")


#: Centre pixels are at least this fraction of their object's largest edge distance.
CENTRE_FRACTION = 0.5


def _with_centres(ids: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``classes`` (background / interior / boundary) with class 3 (centre) on the interior
    pixels whose Euclidean distance to the nearest non-interior pixel is at least
    :data:`CENTRE_FRACTION` of the largest such distance in their object (SciPy, per sample).
    Every object with an interior gets a centre (its deepest pixels). Distances are in
    pixels of the training grid (2D microscopy images are isotropic); an id cut into pieces
    by a crop keeps its centre in the piece that holds its deepest pixels only."""
    ids_np = ids[:, 0].cpu().numpy().astype(np.int64)
    out = classes.clone()
    for b, (sample, cls) in enumerate(zip(ids_np, classes[:, 0].cpu().numpy(), strict=True)):
        interior = cls == 1
        if not interior.any():
            continue
        depth = ndimage.distance_transform_edt(interior)
        n = int(sample.max())
        deepest = np.zeros(n + 1, dtype=np.float64)
        deepest[1:] = ndimage.maximum(depth, sample, np.arange(1, n + 1))
        centre = interior & (depth >= CENTRE_FRACTION * deepest[sample])
        out[b, 0][torch.from_numpy(centre)] = 3
    return out


def unet_weight_map(ids: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0,
                    classes: np.ndarray | None = None) -> np.ndarray:
    """The U-Net paper's loss weight map for one 2D image of instance ids.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` with ``d1``, ``d2`` the
    Euclidean distances to the nearest and the second-nearest object, and ``w_c`` balancing
    the class frequencies of ``classes`` (the target classes; ``ids > 0`` when not given):
    each class gets weight ``1 / (n_classes * frequency)``, so both classes weigh the same in
    total. The exponential term is below ``w0 * 3e-4`` once ``d1 + d2 > 4 sigma``; distances
    are computed in each object's bounding box widened by ``4 sigma``, which is exact
    wherever the term is larger than that.

    Args:
        ids: ``(H, W)`` integer instance ids, 0 = background.
        w0: Weight of the separation term.
        sigma: Its width in pixels.
        classes: ``(H, W)`` target classes (for ``w_c``).

    Returns:
        ``(H, W)`` float32 weights.
    """
    ids = np.asarray(ids)
    classes = (ids > 0).astype(np.int64) if classes is None else np.asarray(classes)
    weights = np.zeros(ids.shape, dtype=np.float32)
    present = np.unique(classes)
    for c in present:
        sel = classes == c
        weights[sel] = 1.0 / (len(present) * sel.mean())
    reach = int(np.ceil(4 * sigma))
    d1 = np.full(ids.shape, np.inf, dtype=np.float32)
    d2 = np.full(ids.shape, np.inf, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is None:
            continue
        wide = tuple(slice(max(0, s.start - reach), min(n, s.stop + reach))
                     for s, n in zip(box, ids.shape, strict=True))
        dist = ndimage.distance_transform_edt(ids[wide] != index).astype(np.float32)
        a, b = d1[wide], d2[wide]
        b[...] = np.minimum(b, np.maximum(a, dist))
        a[...] = np.minimum(a, dist)
    term = np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2), where=np.isfinite(d2),
                  out=np.zeros_like(d1))
    return weights + w0 * term.astype(np.float32)


def batch_weight_maps(ids: torch.Tensor, classes: torch.Tensor, *, w0: float,
                      sigma: float) -> torch.Tensor:
    """:func:`unet_weight_map` for each 2D sample of ``ids`` ``(B, 1, H, W)``: ``(B, H, W)``."""
    ids_np = ids[:, 0].cpu().numpy().astype(np.int64)
    cls_np = classes[:, 0].cpu().numpy()
    maps = [unet_weight_map(i, w0=w0, sigma=sigma, classes=c)
            for i, c in zip(ids_np, cls_np, strict=True)]
    return torch.from_numpy(np.stack(maps))
