"""A training folder a reviewer fills with corrected images: the layout ``medseg-train --data``
reads, ``images/<stem>.<ext>`` beside ``masks/<stem>.<ext>``.

2D images go in as PNG (uint8, or 16-bit grey, without a pixel size) or TIFF (anything else;
the pixel size in micrometres kept), with their rows and columns, so an image and its mask line
up pixel for pixel when read by PIL or tifffile; instance ids stay uint16. Volumes go in as
NIfTI with their exact geometry. Each file is written atomically, the mask before the image: a
folder never holds an image without its mask, even when the process is killed in between.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, ImageReadError
from medseg.io.image import MedImage

logger = logging.getLogger(__name__)

IMAGES = "images"
MASKS = "masks"
#: The endings a training folder's files may have (what the 2D and NIfTI readers take).
SUFFIXES = (".png", ".tif", ".tiff", ".nii.gz", ".nii")


@dataclass(frozen=True)
class TrainingPair:
    """Where an image and its mask were written.

    Attributes:
        stem: The file name both share, without the ending.
        image: The image file.
        mask: The mask file.
        replaced: The image was already in the folder (same pixels): only its mask was
            replaced by the new correction.
    """

    stem: str
    image: Path
    mask: Path
    replaced: bool


def safe_stem(name: str) -> str:
    """A file stem from an image or layer name: letters, digits, ``.``, ``-`` and ``_``.

    Examples:
        >>> safe_stem("T2 axial [c0] / 3"), safe_stem("  ")
        ('T2_axial_c0_3', 'image')
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return re.sub(r"_+", "_", stem) or "image"


def file_suffix(image: MedImage) -> str:
    """``.nii.gz`` for a volume; for a 2D image ``.png`` where a PNG holds it exactly (uint8, or
    16-bit grey, no pixel size), else ``.tif``."""
    from medseg.io.image2d import pixel_size_um

    if image.meta.ndim != 2:
        return ".nii.gz"
    dtype = image.array.dtype
    png = dtype == np.uint8 or (dtype == np.uint16 and image.num_channels == 1)
    return ".png" if png and pixel_size_um(image.meta) is None else ".tif"


def mask_for_training(labels: MedImage, *, instances: bool) -> MedImage:
    """The mask as a training folder stores it: instance ids as uint16 (uint32 above 65535
    objects), class values as uint8 (uint16 above 255).

    Raises:
        GeometryError: Not one channel of non-negative integers.
    """
    values = np.asarray(labels.array)
    integer = np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_
    if labels.num_channels != 1 or not integer:
        raise GeometryError(f"a training mask is one channel of integer labels, got shape "
                            f"{values.shape} of {values.dtype}")
    if values.min(initial=0) < 0:
        raise GeometryError("a training mask holds no negative labels")
    top = int(values.max(initial=0))
    dtype = (np.uint32 if top > np.iinfo(np.uint16).max else
             np.uint16 if instances or top > 255 else np.uint8)
    return labels.with_array(values.astype(dtype, copy=False))


def add_training_pair(folder: str | Path, image: MedImage, labels: MedImage, *, stem: str,
                      instances: bool = False) -> TrainingPair:
    """Write an image and its (corrected) labels into a training folder.

    The same image added again (same stem, same pixels) gets its mask replaced; another image
    under a stem already taken gets ``<stem>-2``, ``<stem>-3``, ...

    Args:
        folder: The training folder (created with ``images/`` and ``masks/`` if missing).
        image: The image as the model sees it (grey, or colour channels of a 2D image).
        labels: One-channel label map on ``image``'s grid.
        stem: File name for both (made safe with :func:`safe_stem`).
        instances: The labels are object ids (stored as uint16).

    Raises:
        GeometryError: The labels are not on the image's grid, or not integer labels.
        ImageWriteError: A file cannot be written.
    """
    if labels.spatial_shape != image.spatial_shape or not labels.meta.same_grid(image.meta):
        raise GeometryError(f"the labels (shape {labels.spatial_shape}, spacing "
                            f"{labels.meta.spacing}) are not on the image's grid (shape "
                            f"{image.spatial_shape}, spacing {image.meta.spacing})")
    # the mask carries the image's provenance: its pixel size unit is the image's
    mask = mask_for_training(labels.with_array(labels.array, provenance=image.meta.provenance),
                             instances=instances)
    suffix = file_suffix(image)
    if mask.array.dtype == np.uint32 and suffix == ".png":
        suffix = ".tif"  # a PNG holds at most 65535 objects
    folder = Path(folder)
    stem, replaced = _free_stem(folder, safe_stem(stem), image)
    image_path = _existing(folder / IMAGES, stem) if replaced else None
    if image_path is not None:
        suffix = _suffix_of(image_path)
    mask_path = folder / MASKS / f"{stem}{suffix}"
    _write(mask, mask_path, label=True)
    if image_path is None:
        image_path = folder / IMAGES / f"{stem}{suffix}"
        _write(image, image_path, label=False)
    logger.info("training pair %s: %s, %s%s", stem, image_path, mask_path,
                " (mask replaced)" if replaced else "")
    return TrainingPair(stem, image_path, mask_path, replaced)


def _suffix_of(path: Path) -> str:
    name = path.name.lower()
    return next(s for s in SUFFIXES if name.endswith(s))


def _existing(folder: Path, stem: str) -> Path | None:
    """The file ``<stem><suffix>`` in ``folder`` for one of :data:`SUFFIXES`, if any."""
    for suffix in SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _free_stem(folder: Path, stem: str, image: MedImage) -> tuple[str, bool]:
    """``(stem, replaced)``: the stem itself when it is free or holds the same image, else the
    first free ``<stem>-<n>``."""
    candidate, n = stem, 1
    while True:
        present = _existing(folder / IMAGES, candidate)
        if present is None:
            return candidate, False
        if _same_pixels(present, image):
            return candidate, True
        n += 1
        candidate = f"{stem}-{n}"


def _same_pixels(path: Path, image: MedImage) -> bool:
    from medseg.io import read_image

    try:
        stored = read_image(path)
    except (ImageReadError, GeometryError, OSError):
        return False
    a, b = np.asarray(stored.array), np.asarray(image.array)
    if a.shape != b.shape and a.shape[0] == 4 and b.shape[0] == 3:  # RGBA file, RGB layer
        a = a[:3]
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _write(image: MedImage, path: Path, *, label: bool) -> None:
    from medseg.io.image2d import write_image_2d, write_label_image_2d
    from medseg.io.nifti import write_nifti

    if path.name.lower().endswith((".nii", ".nii.gz")):
        write_nifti(image, path, dtype=image.array.dtype if label else None)
    elif label:
        write_label_image_2d(image, path)
    else:
        write_image_2d(image, path)
