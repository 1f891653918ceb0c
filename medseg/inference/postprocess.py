"""Optional clean-up of label maps: keep the largest component per label, drop small ones,
fill the holes a label encloses.

Hand-written on ``scipy.ndimage.label`` rather than MONAI's ``KeepLargestConnectedComponent`` /
``RemoveSmallObjects``: those work on one-hot tensors (``classes x volume`` memory) and the
latter takes its size in voxels or needs a pixdim per call; here one label at a time is
processed on the uint8 map, with sizes in millilitres on the image's own spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.io.image import ImageMeta

#: Voxels counted per ``np.bincount`` call (its int64 copy then stays ~32 MB).
_COUNT_CHUNK = 1 << 22


@dataclass(frozen=True)
class PostprocessConfig:
    """What to clean up after prediction.

    Attributes:
        keep_largest: Keep only the largest connected component of each label.
        min_size_ml: Remove components smaller than this (mL for 3D; mm^2 / 1000 for 2D).
        fill_holes: After the above, label the background each label encloses (a cyst or a
            resection cavity inside a lesion, which FLAIR shows dark and readers outline with
            the lesion): in each slice for a 2D model's volume, in the volume for a 3D model.
            Only background is filled, never another label.
    """

    keep_largest: bool = False
    min_size_ml: float = 0.0
    fill_holes: bool = False

    @property
    def active(self) -> bool:
        return self.keep_largest or self.min_size_ml > 0 or self.fill_holes


def clean_labels(labels: np.ndarray, spacing: tuple[float, ...], config: PostprocessConfig,
                 *, per_slice: bool = False) -> np.ndarray:
    """Apply ``config`` to a label map ``(*spatial)`` in place; removed voxels become 0.

    Components are face-connected (6-connectivity in 3D, 4 in 2D). ``per_slice``: the map is
    a 2D model's volume, whose holes are filled in each slice (the planes of the first two
    axes, the engine's slices).

    Examples:
        >>> lab = np.zeros((10, 10), np.uint8); lab[1:4, 1:4] = 1; lab[7, 7] = 1
        >>> int(clean_labels(lab, (1.0, 1.0), PostprocessConfig(keep_largest=True)).sum())
        9
        >>> ring = np.zeros((7, 7), np.uint8); ring[1:6, 1:6] = 1; ring[3, 3] = 0
        >>> int(clean_labels(ring, (1.0, 1.0), PostprocessConfig(fill_holes=True))[3, 3])
        1
    """
    if not config.active:
        return labels
    if config.keep_largest or config.min_size_ml > 0:
        _drop_components(labels, spacing, config)
    if config.fill_holes:
        for value in _present(labels):
            mask = labels == value
            # a hole lies inside the label's bounding box: background touching the box's faces
            # touches the outside
            box = _bounding_box(mask)
            inside = labels[box]  # a view: the filling writes into ``labels``
            inside[fill_holes(mask[box], per_slice=per_slice) & (inside == 0)] = value
    return labels


def fill_holes(mask: np.ndarray, *, per_slice: bool = False) -> np.ndarray:
    """``mask`` with the background it encloses set; ``per_slice``: enclosed in each plane of
    the first two axes of a 3D mask, else in the whole mask. Background connects through faces
    only, so a rim closed at a corner still encloses.

    Examples:
        >>> tube = np.ones((5, 5, 3), bool); tube[2, 2, :] = False  # open at both ends
        >>> bool(fill_holes(tube)[2, 2, 1]), bool(fill_holes(tube, per_slice=True)[2, 2, 1])
        (False, True)
    """
    from scipy import ndimage

    if per_slice and mask.ndim == 3:
        out = mask.copy()
        for k in range(mask.shape[2]):
            if mask[:, :, k].any():
                out[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
        return out
    return ndimage.binary_fill_holes(mask)


def _present(labels: np.ndarray) -> np.ndarray:
    """The non-zero values of a label map (a histogram for uint8/uint16, not a sort)."""
    return (np.flatnonzero(count_values(labels, 2)[1:]) + 1
            if labels.dtype in (np.uint8, np.uint16) else np.unique(labels[labels != 0]))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    from scipy import ndimage

    return ndimage.find_objects(mask.view(np.uint8))[0]


def _drop_components(labels: np.ndarray, spacing: tuple[float, ...],
                     config: PostprocessConfig) -> None:
    """Remove the components ``config`` does not keep (smaller than ``min_size_ml``, not the
    largest), in place."""
    from scipy import ndimage

    voxel_ml = math.prod(spacing) / 1000.0
    min_voxels = int(math.ceil(config.min_size_ml / voxel_ml)) if config.min_size_ml > 0 else 0
    for value in _present(labels):
        mask = labels == value
        # components are found inside the label's bounding box only: predictions are mostly
        # background, and labelling the whole volume was most of the clean-up's time
        box = _bounding_box(mask)
        components, _ = ndimage.label(mask[box])
        sizes = np.bincount(components.ravel(order="A"))
        sizes[0] = 0
        keep = sizes >= max(min_voxels, 1)
        if config.keep_largest:
            largest = np.zeros_like(keep)
            largest[int(np.argmax(sizes))] = True
            keep &= largest
        inside = labels[box]  # a view: the removal writes into ``labels``
        inside[(components > 0) & ~keep[components]] = 0


def count_values(labels: np.ndarray, minlength: int) -> np.ndarray:
    """How many voxels hold each value ``0..`` of a non-negative integer map (int64, at least
    ``minlength`` long), counted in chunks of the map's memory order: ``np.bincount`` copies
    its input to int64, which for a whole 52-million-voxel map would be 400 MB.

    Examples:
        >>> count_values(np.array([[0, 2], [2, 2]], np.uint8), 4).tolist()
        [1, 0, 3, 0]
    """
    counts = np.zeros(minlength, dtype=np.int64)
    flat = labels.reshape(-1, order="A")  # memory order: no copy of a first-axis-fastest map
    for start in range(0, flat.size, _COUNT_CHUNK):
        chunk = np.bincount(flat[start:start + _COUNT_CHUNK])
        if chunk.size > counts.size:
            counts = np.pad(counts, (0, chunk.size - counts.size))
        counts[: chunk.size] += chunk
    return counts


def _named_amounts(labels: np.ndarray, label_names: dict[int, str], unit: float
                   ) -> dict[str, float]:
    """Voxel count of every named foreground label times ``unit`` (0.0 for labels not
    present), counted in chunks of the map's memory order."""
    counts = count_values(labels, max(int(labels.max(initial=0)), max(label_names, default=0))
                          + 1)
    return {name: round(float(counts[value]) * unit, 6)
            for value, name in sorted(label_names.items()) if value != 0}


def label_volumes_ml(labels: np.ndarray, spacing: tuple[float, ...],
                     label_names: dict[int, str], *, instances: bool = False
                     ) -> dict[str, float]:
    """Volume of every named foreground label in mL (0.0 for labels not present; an instance
    map: the total volume of all objects, under ``"objects"``)."""
    return _sizes(labels, label_names, math.prod(spacing) / 1000.0, instances)


def _sizes(labels: np.ndarray, label_names: dict[int, str], unit: float, instances: bool
           ) -> dict[str, float]:
    if instances:
        return {"objects": round(float(np.count_nonzero(labels)) * unit, 6)}
    return _named_amounts(labels, label_names, unit)


def area_unit(meta: ImageMeta) -> str:
    """The unit of a 2D image's areas: ``"px^2"`` when its pixel size is unknown (PNG, JPEG,
    a TIFF without a resolution), ``"um^2"`` for a microscopy pixel size in micrometres,
    ``"mm^2"`` for medical images (DICOM, NIfTI), whose spacing is in millimetres."""
    unit = meta.provenance.spacing_unit
    return {"px": "px^2", "um": "um^2"}.get(unit or "mm", "mm^2")


def label_areas(labels: np.ndarray, spacing: tuple[float, ...], label_names: dict[int, str],
                *, instances: bool = False) -> dict[str, float]:
    """Area of every named foreground label of a 2D map in the spacing's unit squared (an
    instance map: the total area of all objects, under ``"objects"``)."""
    return _sizes(labels, label_names, math.prod(spacing), instances)


def labels_from_probabilities(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """A class map (uint8, uint16 above 255 classes) from ``(K, *spatial)`` probabilities, at
    a chosen foreground threshold instead of the argmax.

    A voxel is foreground where its foreground probability (``1 - p[0]`` with a softmax;
    ``p[0]`` for a single sigmoid output) reaches ``threshold``, and then takes its most
    probable foreground class. With two classes and ``threshold`` 0.5 this is the argmax (ties
    aside); with more it counts every foreground class together against the background.

    Raises:
        ValueError: ``threshold`` outside ``(0, 1]``.

    Examples:
        >>> p = np.array([[0.6, 0.3], [0.3, 0.3], [0.1, 0.4]])  # 3 classes, 2 voxels
        >>> labels_from_probabilities(p, 0.5).tolist(), labels_from_probabilities(p, 0.3).tolist()
        ([0, 2], [1, 2])
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    p = np.asarray(probabilities)
    k = p.shape[0]
    if k == 1:
        return (p[0] >= threshold).astype(np.uint8)
    dtype = np.uint8 if k <= 256 else np.uint16
    foreground = (1.0 - p[0].astype(np.float32)) >= threshold
    labels = (np.argmax(p[1:], axis=0) + 1).astype(dtype)
    labels[~foreground] = 0
    return labels
