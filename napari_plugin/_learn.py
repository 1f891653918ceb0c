"""Pure logic of the learning loop in napari (no Qt): corrected labels into a training folder,
the fit banner in plain words, and what the Fine-tune panel shows.

correct (Review) ──Add to training set──▶ training folder ──Fine-tune──▶ a new model
──Segment──▶ the next image. The widgets only wire these functions to buttons and workers.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import evented

from medseg.errors import GeometryError
from medseg.io.image import MedImage
from napari_plugin._geometry import META_KEY, labels_to_medimage, meta_from_layer
from napari_plugin._layers import INSTANCES_KEY, SOURCE_LAYER_KEY

#: The button the fit banner offers when an image is not like the model's training images.
FINETUNE_OFFER = "Correct a few images and fine-tune"
#: The fit checks that say "another kind of image": correcting and fine-tuning is the way out.
KIND_CHECKS = ("intensity", "modality", "training_data")


@evented
@dataclass
class LoopState:
    """What the loop's widgets share in one viewer: the training folder the reviewer fills
    and the model the corrections are for; ``added`` counts the corrections written (evented:
    ``state.events.training_folder``, ``state.events.added``)."""

    training_folder: Path | None = None
    base_model: str | None = None
    added: int = 0


_STATES: weakref.WeakKeyDictionary[Any, LoopState] = weakref.WeakKeyDictionary()


def loop_state(viewer: Any) -> LoopState:
    """The :class:`LoopState` of a viewer (made on first use, gone with the viewer)."""
    state = _STATES.get(viewer)
    if state is None:
        state = _STATES[viewer] = LoopState()
    return state


# -- Add to training set ------------------------------------------------------------------------
@dataclass(frozen=True)
class Correction:
    """A corrected labels layer and its image, captured for the training folder.

    Attributes:
        image: The image, as its layer holds it (colour channels of an RGB layer).
        labels: The labels on the image's grid.
        stem: File name for both (the image's file name where it came from a file).
        instances: The labels are object ids.
        image_layer: Name of the image layer.
    """

    image: MedImage
    labels: MedImage
    stem: str
    instances: bool
    image_layer: str


def _spatial_shape(layer: Any) -> tuple[int, ...]:
    shape = tuple(int(s) for s in layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def image_layer_of(labels_layer: Any, image_layers: Sequence[Any]) -> Any:
    """The image layer a labels layer belongs to: the one its medseg metadata names, else the
    only image layer of its shape.

    Raises:
        GeometryError: No such layer, or several of that shape (the message says what to do).
    """
    name = str(labels_layer.name)
    source = labels_layer.metadata.get(SOURCE_LAYER_KEY)
    if source:
        named = [ly for ly in image_layers if ly.name == source]
        if not named:
            raise GeometryError(f"the image {source!r} that {name!r} was made on is no longer "
                                "open: open it again to add this correction")
        return named[0]
    shape = tuple(int(s) for s in labels_layer.data.shape)
    fits = [ly for ly in image_layers if _spatial_shape(ly) == shape]
    if len(fits) != 1:
        what = "no image layer" if not fits else f"{len(fits)} image layers"
        raise GeometryError(f"{what} of the shape of {name!r} {shape}: segment the image with "
                            "the Segment widget and correct its result, so that the labels "
                            "know their image")
    return fits[0]


def training_stem(image: MedImage, layer_name: str) -> str:
    """The file name an image goes into a training folder under: its file's name without the
    ending, else (a DICOM series, an image made in napari) the layer's name.

    Examples:
        >>> from medseg.io.image import ImageMeta, Provenance
        >>> import numpy as np
        >>> meta = ImageMeta.identity(2, provenance=Provenance(path="/d/cells_03.png"))
        >>> training_stem(MedImage(np.zeros((1, 2, 2)), meta), "cells_03 [c0]")
        'cells_03'
    """
    path = image.meta.provenance.path
    if path and image.meta.provenance.format != "dicom":
        return training_stem_of_path(Path(path))
    return layer_name


def capture_correction(labels_layer: Any, image_layers: Sequence[Any]) -> Correction:
    """Copy a labels layer and its image (GUI thread), the labels placed on the image's grid.

    Raises:
        GeometryError: No image for the labels, or the labels are not on its grid.
    """
    from napari_plugin._run import layer_image

    image_layer = image_layer_of(labels_layer, image_layers)
    image = layer_image(image_layer)
    name = str(labels_layer.name)
    if labels_layer.metadata.get(META_KEY):
        own = meta_from_layer(labels_layer.metadata, layer_name=name)
        if not own.same_grid(image.meta):
            raise GeometryError(f"{name!r} is not on the grid of its image "
                                f"{image_layer.name!r}: it cannot be added as its correction")
    labels = labels_to_medimage(labels_layer.data, image.meta,
                                expected_shape=image.spatial_shape, layer_name=name)
    return Correction(image=image, labels=labels, stem=training_stem(image, image_layer.name),
                      instances=bool(labels_layer.metadata.get(INSTANCES_KEY)),
                      image_layer=str(image_layer.name))


def add_correction(folder: str | Path, correction: Correction) -> str:
    """Write a captured correction into a training folder (worker thread); returns the line
    to show (what was written, how many images the folder now holds)."""
    from medseg.io.training_set import add_training_pair

    pair = add_training_pair(folder, correction.image, correction.labels,
                             stem=correction.stem, instances=correction.instances)
    what = "replaced the mask of" if pair.replaced else "added"
    return f"{what} {pair.stem} in {Path(folder).name}/ ({training_folder_summary(folder)})"


def training_stems(folder: str | Path) -> set[str]:
    """The names of the images of a training folder that have their mask."""
    from medseg.io.training_set import IMAGES, MASKS, SUFFIXES

    def stems(sub: str) -> set[str]:
        out = set()
        for p in (Path(folder) / sub).glob("*"):
            name = p.name
            for suffix in SUFFIXES:
                if name.lower().endswith(suffix) and not name.startswith("."):
                    out.add(name[: -len(suffix)])
                    break
        return out

    return stems(IMAGES) & stems(MASKS)


def training_folder_summary(folder: str | Path) -> str:
    """``"3 images with masks"``: what a training folder holds (images without a mask are
    not counted: training would refuse them)."""
    n = len(training_stems(folder))
    return f"{n} image{'s' if n != 1 else ''} with masks"


def ranking_line(rank: int, row: Any, *, added: set[str] | frozenset[str] = frozenset()) -> str:
    """One line of the Correct-next list: rank, image, confidence, objects; whether it is in
    the training folder already; why it failed.

    Examples:
        >>> from types import SimpleNamespace as Row
        >>> row = Row(name="he_01", score=0.2031, objects=12, error=None,
        ...           case=Row(path=Path("/d/he_01.png")))
        >>> ranking_line(1, row), ranking_line(1, row, added={"he_01"})
        ('1. he_01: confidence 0.20, 12 objects', '1. he_01: confidence 0.20, 12 objects (added)')
    """
    if row.score is None:
        return f"{rank}. {row.name}: not segmented ({row.error})"
    line = f"{rank}. {row.name}: confidence {row.score:.2f}"
    if row.objects is not None:
        line += f", {row.objects} object{'s' if row.objects != 1 else ''}"
    stem = training_stem_of_path(Path(row.case.path))
    return line + (" (added)" if stem in added or row.name in added else "")


def training_stem_of_path(path: Path) -> str:
    """A file's name without its image ending (``.nii.gz`` counted whole)."""
    from medseg.io.training_set import SUFFIXES

    name = path.name
    for suffix in (*SUFFIXES, ".jpg", ".jpeg", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# -- the fit banner in plain words --------------------------------------------------------------
@dataclass(frozen=True)
class Banner:
    """The banner over a result.

    Attributes:
        text: What a biologist reads.
        level: ``"ok"`` or ``"warn"``.
        detail: The technical report (the banner's tooltip).
        offer_finetune: Show the way out: :data:`FINETUNE_OFFER`.
    """

    text: str
    level: str
    detail: str
    offer_finetune: bool


def plain_fit_banner(prediction: Any) -> Banner:
    """The fit banner of a result in plain words: an intensity warning becomes "These images
    look different from what this model was trained on (...). Results may be poor.", with the
    other warnings after it and the offer to correct and fine-tune; the technical report stays
    as the detail."""
    from medseg.inference.fit import intensity_in_words
    from napari_plugin._run import fit_banner

    technical, level = fit_banner(prediction)
    report = getattr(prediction, "fit", None)
    warnings = list(report.warnings) if report is not None else []
    if not any(c.name in KIND_CHECKS for c in warnings):
        return Banner(technical, level, technical, False)
    intensity = next((c for c in warnings if c.name == "intensity"), None)
    lines = []
    if intensity is not None:
        words = intensity_in_words(intensity.detail) if intensity.detail else None
        lines.append("These images look different from what this model was trained on"
                     + (f" ({words})" if words else "") + ". Results may be poor.")
    confidence = getattr(prediction, "confidence", None)
    if confidence is not None and confidence.low and confidence.message:
        lines.append(_sentence(confidence.message))
    lines += [_sentence(c.message) for c in warnings if c is not intensity]
    return Banner(" ".join(lines), "warn", technical, True)


def _sentence(message: str) -> str:
    """A check's message as a sentence: capitalised, with a full stop."""
    text = message.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


# -- what the Fine-tune panel shows -------------------------------------------------------------
def duration(seconds: float) -> str:
    """``"4 min 05 s"``, ``"42 s"``: a time span as the panel shows it.

    Examples:
        >>> duration(245.4), duration(42.0), duration(3725)
        ('4 min 05 s', '42 s', '1 h 02 min')
    """
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress_text(progress: Any) -> str:
    """One line from a ``FinetuneProgress``: phase, step, time used of the budget, time left,
    and the latest validation figure.

    Examples:
        >>> from types import SimpleNamespace as P
        >>> progress_text(P(phase="training", step=120, elapsed_s=75, budget_s=300,
        ...                 eta_s=225, val_metric=0.4321))
        'training: step 120, 1 min 15 s of 5 min 00 s, about 3 min 45 s left; validation 0.432'
    """
    line = (f"{progress.phase}: step {progress.step}, {duration(progress.elapsed_s)} of "
            f"{duration(progress.budget_s)}, about {duration(progress.eta_s)} left")
    if progress.val_metric is not None:
        line += f"; validation {progress.val_metric:.3f}"
    return line


def progress_fraction(progress: Any) -> float:
    """How far a run is, 0..1, from its elapsed time and what is left."""
    total = float(progress.elapsed_s) + max(float(progress.eta_s), 0.0)
    return min(max(float(progress.elapsed_s) / total, 0.0), 1.0) if total > 0 else 0.0


def result_text(result: Any) -> str:
    """What a ``FinetuneResult`` means for the user: the before/after figures on the held-back
    images and where the model went (exported, or kept only as a candidate).

    Examples:
        >>> from types import SimpleNamespace as R
        >>> from pathlib import Path
        >>> print(result_text(R(metric="AP@0.5", before=0.012, after=0.561, improved=True,
        ...     candidate=False, model_path=Path("/m/nuclei-he.safetensors"), steps=900,
        ...     minutes=5.0, train_cases=["a", "b", "c"], val_cases=["d"])))
        AP@0.5 on 1 held-back image: 0.012 before, 0.561 after.
        900 steps in 5.0 min on 3 training images.
        Better than its base: saved as nuclei-he (/m/nuclei-he.safetensors).
    """
    n = len(result.val_cases)
    head = (f"{result.metric} on {n} held-back image{'s' if n != 1 else ''}: "
            f"{result.before:.3f} before, {result.after:.3f} after.\n{result.steps} steps in "
            f"{result.minutes:.1f} min on {len(result.train_cases)} training images.")
    name = model_name(result.model_path)
    if result.candidate or not result.improved:
        return (f"{head}\nNot better than its base: kept only as the candidate {name} "
                f"({result.model_path}); keep using the base model, or correct more images "
                "and fine-tune again.")
    return f"{head}\nBetter than its base: saved as {name} ({result.model_path})."


def model_name(path: str | Path) -> str:
    """A model file's name without ``.safetensors``."""
    return Path(path).name.removesuffix(".safetensors")
