"""The folder a fine-tune learns from: ``images/`` beside ``masks/`` with matching stems.

2D images are PNG or TIFF; volumes are NIfTI files or DICOM series folders, with NIfTI (or
NRRD/MHA) label maps or DICOM SEG files (``masks/<stem>.dcm``). :func:`index_folder` pairs
them, :func:`check_pairs` reads every pair once (one at a time: nothing is kept) and refuses,
before any training, whatever does not fit the base model, with a one-line reason naming the
file; :func:`hold_out` decides what is held back for validation.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medseg.errors import DatasetError, MedsegError
from medseg.io.image import MedImage
from medseg.metrics.evaluate import case_id_of
from medseg.model_card import ModelCard
from medseg.training.reading import read_case_image, read_case_label
from medseg.training.sources import CasePair

logger = logging.getLogger(__name__)

IMAGES, MASKS = "images", "masks"
FILE_SUFFIXES = (".png", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")
#: From this many images on, whole images are held back; below it, a band of every image.
WHOLE_IMAGES_FROM = 10
#: Fraction of the images (or of each image's longest axis) held back for validation.
HOLD_OUT_FRACTION = 0.2
#: At most this many whole images are held back (scoring time stays short).
MAX_HELD_OUT = 8


@dataclass
class FolderCheck:
    """What :func:`check_pairs` found.

    Attributes:
        pairs: The image/mask pairs, in the folder's order.
        colour: Some image has colour channels (RGB/RGBA) and the model takes one channel:
            a channel rule is needed.
        spatial_dims: 2 or 3 (of the images).
        digests: ``{stem: sha256 of the image file (or the series' files, in order)}``.
        objects: Objects (instance models) or labelled voxels (class models) per stem.
        shapes: Spatial shape per stem.
        channels: The images' channel counts.
        units: The images' spacing units (``"px"``, ``"um"``, ``"mm"``;
            :func:`medseg.inference.fit.spacing_unit`).
    """

    pairs: list[CasePair]
    colour: bool
    spatial_dims: int
    digests: dict[str, str] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    channels: set[int] = field(default_factory=set)
    units: set[str] = field(default_factory=set)


def index_folder(folder: str | Path) -> list[CasePair]:
    """The image/mask pairs of ``folder`` (``images/<stem>.<ext>`` or ``images/<stem>/`` for a
    DICOM series, with ``masks/<stem>.<ext>``; a ``.dcm`` mask is a DICOM SEG).

    Raises:
        DatasetError: No such folder, no images, or an image without its mask (named).
    """
    folder = Path(folder)
    images_dir, masks_dir = folder / IMAGES, folder / MASKS
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DatasetError(f"{folder}: no {d.name}/ folder (a training folder holds "
                               f"{IMAGES}/ and {MASKS}/ with matching file names)")
    masks = {case_id_of(p): p for p in sorted(masks_dir.iterdir()) if _is_data(p)}
    pairs = []
    for image in sorted(images_dir.iterdir()):
        if not (_is_data(image) or (image.is_dir() and not image.name.startswith("."))):
            continue
        stem = image.name if image.is_dir() else case_id_of(image)
        if stem not in masks:
            raise DatasetError(f"{image}: no mask {masks_dir}/{stem}.* for this image")
        label = masks[stem]
        pairs.append(CasePair(stem, image, label, label_is_seg=label.suffix.lower() == ".dcm"))
    if not pairs:
        raise DatasetError(f"{images_dir}: no images ({', '.join(FILE_SUFFIXES)} files or "
                           "DICOM series folders)")
    return pairs


def _is_data(path: Path) -> bool:
    return (path.is_file() and not path.name.startswith(".")
            and path.name.lower().endswith(FILE_SUFFIXES))


def read_pair(pair: CasePair) -> tuple[MedImage, MedImage]:
    """The image and its label map on the image's grid (a DICOM SEG rasterised onto it)."""
    image = read_case_image(pair.image, case_id=pair.case_id)
    label = read_case_label(pair.label, image, is_seg=pair.label_is_seg, case_id=pair.case_id)
    return image, label


def check_pairs(pairs: Sequence[CasePair], card: ModelCard, *,
                progress: Callable[[int, int], None] | None = None) -> FolderCheck:
    """Read every pair (one at a time) and check it fits ``card``'s model.

    An instance model needs masks of object ids (non-negative integers); a class model needs
    its card's label values. Images must have the model's dimensionality (a 2D model also
    takes volumes, slice by slice), the same grid as their mask, and the model's channels: a
    colour image for a one-channel model is noted (a channel rule will make one channel).

    Raises:
        DatasetError: The first pair that does not fit, named, with the reason.
    """
    from medseg.inference.fit import spacing_unit

    dims = card.spatial_dims
    wanted = card.image_channels
    found_dims: set[int] = set()
    result = FolderCheck(list(pairs), colour=False, spatial_dims=dims)
    for n, pair in enumerate(pairs, 1):
        try:
            image, label = read_pair(pair)
        except MedsegError as exc:
            raise DatasetError(str(exc)) from exc
        where = f"{pair.image}"
        ndim = image.meta.ndim
        if ndim != dims and not (dims == 2 and ndim == 3):
            raise DatasetError(f"{where}: a {ndim}D image; model {card.name!r} is {dims}D")
        found_dims.add(ndim)
        if len(found_dims) > 1:
            raise DatasetError(f"{where}: a {ndim}D image among {min(found_dims)}D ones")
        channels = image.num_channels
        result.channels.add(channels)
        if channels != wanted:
            if wanted == 1 and channels in (3, 4):
                result.colour = True
            elif not (card.input_channels and max(card.input_channels) < channels
                      and len(card.input_channels) == wanted):
                raise DatasetError(f"{where}: {channels} channels; model {card.name!r} takes "
                                   f"{wanted}")
        if label.num_channels != 1 or label.spatial_shape != image.spatial_shape:
            raise DatasetError(f"{pair.label}: mask of shape {label.array.shape[1:]} (channels "
                               f"{label.num_channels}) for an image of "
                               f"{image.spatial_shape}")
        if not image.meta.same_grid(label.meta):
            raise DatasetError(f"{pair.label}: not on the image's grid (spacing "
                               f"{label.meta.spacing} vs {image.meta.spacing})")
        result.objects[pair.case_id] = _check_mask_values(pair.label, label, card)
        result.shapes[pair.case_id] = image.spatial_shape
        result.units.add(spacing_unit(image))
        result.digests[pair.case_id] = content_digest(pair.image)
        if progress is not None:
            progress(n, len(pairs))
    result.spatial_dims = found_dims.pop() if found_dims else dims
    return result


def _check_mask_values(path: Path, label: MedImage, card: ModelCard) -> int:
    """Objects (instance model) or labelled voxels (class model) in a mask that fits."""
    values = np.asarray(label.array)
    if not np.issubdtype(values.dtype, np.integer):
        if not (np.all(np.isfinite(values)) and np.array_equal(values, np.round(values))):
            raise DatasetError(f"{path}: the mask holds non-integer values")
        values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise DatasetError(f"{path}: the mask holds negative values")
    present = np.unique(values)
    if card.instances is not None:
        ids = int(np.count_nonzero(present))
        if ids == 1:
            from scipy import ndimage

            separate = ndimage.label(values[0] > 0)[1]
            if separate > 1:
                raise DatasetError(f"{path}: {separate} separate objects all carry the value "
                                   f"{int(present.max())}, but model {card.name!r} separates "
                                   "objects: each object needs its own id 1, 2, 3...")
        return ids
    unknown = sorted(int(v) for v in present if int(v) not in card.label_names)
    if unknown:
        raise DatasetError(f"{path}: label values {unknown[:5]} are not among model "
                           f"{card.name!r}'s {sorted(card.label_names)} "
                           f"({', '.join(card.label_names.values())})")
    return int(np.count_nonzero(values))


def content_digest(path: Path) -> str:
    """SHA-256 of an image file, or of a DICOM series folder's files (sorted by name)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as stream:
            while block := stream.read(1 << 20):
                h.update(block)
    return h.hexdigest()


@dataclass
class HoldOut:
    """What a fine-tune trains on and what it is scored on.

    Attributes:
        method: ``"whole images"`` or ``"bands"`` (every image's last fifth along its longest
            axis, or its last slices for a 2D model on volumes, is held back; the rest trains).
        train: Training pairs.
        val: Validation pairs.
    """

    method: str
    train: list[CasePair]
    val: list[CasePair]

    def describe(self) -> str:
        if self.method == "whole images":
            return (f"{len(self.val)} of {len(self.train) + len(self.val)} images held back "
                    "whole for validation")
        return (f"a band of every image ({HOLD_OUT_FRACTION:.0%} of its longest axis, or of "
                "its slices) held back for validation; the rest of each image trains")


def hold_out(pairs: Sequence[CasePair], *, seed: int, band_dir: Path, instances: bool,
             slicewise: bool = False) -> HoldOut:
    """Hold back whole images (``WHOLE_IMAGES_FROM`` or more), else a band of every image.

    Bands are written to ``band_dir`` (``images/`` and ``masks/``: ``<stem>-train`` and
    ``<stem>-val`` crops, geometry kept), so training and scoring read them like any other
    image. A band is cut along the longest axis (2D and 3D models) or the slice axis (a 2D
    model on volumes).
    """
    pairs = list(pairs)
    if len(pairs) >= WHOLE_IMAGES_FROM:
        n_val = min(MAX_HELD_OUT, max(2, int(round(HOLD_OUT_FRACTION * len(pairs)))))
        order = np.random.default_rng(seed).permutation(len(pairs))
        val_ids = {pairs[i].case_id for i in order[:n_val]}
        return HoldOut("whole images", [p for p in pairs if p.case_id not in val_ids],
                       [p for p in pairs if p.case_id in val_ids])
    from medseg.io.training_set import add_training_pair

    train, val = [], []
    for pair in pairs:
        image, label = read_pair(pair)
        shape = image.spatial_shape
        axis = len(shape) - 1 if slicewise else int(np.argmax(shape))
        if shape[axis] < 2:
            raise DatasetError(f"{pair.image}: too small to hold back a part of it "
                               f"(shape {shape}); add a second image")
        cut = shape[axis] - max(1, int(round(HOLD_OUT_FRACTION * shape[axis])))
        for part, (a, b), out in ((f"{pair.case_id}-train", (0, cut), train),
                                  (f"{pair.case_id}-val", (cut, shape[axis]), val)):
            box = [(0, s) for s in shape]
            box[axis] = (a, b)
            written = add_training_pair(band_dir, image.crop(box), label.crop(box), stem=part,
                                        instances=instances)
            out.append(replace(pair, case_id=written.stem, image=written.image,
                               label=written.mask, label_is_seg=False))
    return HoldOut("bands", train, val)
