"""One segmentation run, without Qt: capture the request, run the engine, build the result layer.

A :class:`SegmentRequest` is taken on the GUI thread when the user presses *Run*: it holds the
image layer itself and a *copy* of its voxels and grid, so nothing the user does afterwards
(switching, editing, re-scaling or deleting layers) can change what is segmented or where the
result is placed. :func:`run_request` then runs in a worker thread, and
:func:`result_layer_data` builds the labels layer on the captured grid.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import GeometryError, ModelError
from medseg.inference.options import InferenceOptions
from medseg.inference.postprocess import PostprocessConfig
from medseg.io.image import ImageMeta, MedImage
from napari_plugin._geometry import (
    META_KEY,
    SHAPE_KEY,
    from_layer_array,
    from_rgb_layer_array,
    meta_from_layer,
    meta_from_world_transform,
)
from napari_plugin._layers import LayerData, labels_layer_data
from napari_plugin._logic import model_display_name, result_layer_name

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
#: Result layer metadata: the box (``[[start, stop], ...]`` per medseg axis) a run was limited
#: to, or ``None`` for the whole image.
REGION_KEY = "medseg_region"


@dataclass(frozen=True)
class EngineOptions:
    """What to run: the model, the inference settings, and the extra layers to show.

    Attributes:
        model: Shipped model name or path of a ``.safetensors`` model file.
        inference: The engine settings (the same typed object the CLI and the batch runner
            pass on): device, overlap, TTA, precision, clean-up.
        uncertainty: Also return the per-voxel uncertainty (normalised entropy of the softmax,
            averaged over the mirrorings with TTA), shown as its own image layer.
        probabilities: Keep the probabilities: a foreground-probability image layer, and the
            threshold / minimum-size controls that relabel without re-running the network.
    """

    model: str
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    uncertainty: bool = False
    probabilities: bool = False


@dataclass(frozen=True)
class SegmentRequest:
    """Everything a run needs, frozen at the moment *Run* was pressed.

    Attributes:
        layer: The napari image layer the result belongs to.
        layer_name: Its name at capture time (used to name the result).
        image: A copy of its voxels on its grid, ``(1, i, j, k)`` (``(C, i, j)``: the colour
            channels of an RGB layer).
        options: Engine settings.
        region: Segment inside this box only (one ``(start, stop)`` index range per medseg
            axis, :func:`box_from_shapes`); ``None``: the whole image.
    """

    layer: Any
    layer_name: str
    image: MedImage
    options: EngineOptions
    region: tuple[tuple[int, int], ...] | None = None

    @property
    def result_name(self) -> str:
        return result_layer_name(self.layer_name, model_display_name(self.options.model))


def layer_grid(layer: Any) -> ImageMeta:
    """The medseg grid of an image layer: the stored one, or one derived from its transform.

    A layer opened by the medseg reader carries its ``ImageMeta``; any other layer's grid is
    derived from its napari ``scale``/``translate``/``affine`` (so a plain numpy layer with
    a physical ``scale`` is segmented at that spacing).
    """
    if layer.metadata.get(META_KEY):
        return meta_from_layer(layer.metadata, layer_name=layer.name)
    return meta_from_world_transform(layer.data_to_world, layer.ndim)


def box_from_shapes(shapes: Any, image_layer: Any, spatial_shape: Sequence[int]
                    ) -> tuple[tuple[int, int], ...]:
    """The box (``(start, stop)`` per medseg axis ``(i, j, k)``) that a napari Shapes layer
    draws over an image layer.

    Every vertex goes through world coordinates (``shapes.data_to_world``, then
    ``image_layer.world_to_data``), so the shapes may carry their own scale or transform. The
    box holds the voxels whose centres lie within the vertices' extent; several shapes give
    their common bounding box. Along an axis where all vertices sit on one value (a rectangle
    drawn on one slice of a volume) the box spans the whole axis.

    Raises:
        GeometryError: No shapes, a layer of another dimensionality, or a box that misses the
            image.
    """
    name = str(getattr(shapes, "name", "shapes"))
    vertices = [np.asarray(v, dtype=np.float64) for v in shapes.data]
    if not vertices:
        raise GeometryError(f"shapes layer {name!r} is empty: draw a rectangle around the "
                            "region to segment")
    ndim = len(spatial_shape)
    if shapes.ndim != ndim:
        raise GeometryError(f"shapes layer {name!r} has {shapes.ndim} axes but the image has "
                            f"{ndim}: draw the box in a shapes layer over this image")
    points = np.concatenate(vertices, axis=0)
    data = np.array([image_layer.world_to_data(shapes.data_to_world(p)) for p in points])
    lo, hi = data.min(axis=0), data.max(axis=0)
    sizes = list(reversed([int(s) for s in spatial_shape]))  # napari order (k, j, i)
    box = []
    for axis, size in enumerate(sizes):
        if hi[axis] - lo[axis] < 1e-6:  # drawn on one slice: every slice of that axis
            start, stop = 0, size
        else:
            start = max(0, math.ceil(lo[axis] - 1e-6))
            stop = min(size, math.floor(hi[axis] + 1e-6) + 1)
        if start >= stop:
            raise GeometryError(f"the box of shapes layer {name!r} misses the image")
        box.append((start, stop))
    return tuple(reversed(box))


def layer_image(layer: Any) -> MedImage:
    """A copy of an image layer's voxels on its grid: ``(1, i, j[, k])`` for a grey layer,
    ``(C, i, j)`` (its colour channels) for an RGB layer.

    Raises:
        GeometryError: The layer is multiscale, not 2D/3D, or does not fit its stored grid.
    """
    name = str(layer.name)
    if getattr(layer, "multiscale", False):
        raise GeometryError(f"layer {name!r} is multiscale; medseg segments one 2D or 3D "
                            "image (open a single resolution level)")
    if layer.ndim not in (2, 3):
        raise GeometryError(f"layer {name!r} has {layer.ndim} axes; medseg segments 2D or 3D "
                            "images (split channels or time points into separate layers)")
    data = np.array(layer.data, copy=True)
    array = (from_rgb_layer_array(data) if getattr(layer, "rgb", False)
             else from_layer_array(data)[None])
    meta = layer_grid(layer)
    stored_shape = layer.metadata.get(SHAPE_KEY)
    if stored_shape is not None and list(array.shape[1:]) != list(stored_shape):
        raise GeometryError(f"layer {name!r} has shape {array.shape[1:]} (i, j, k) but its "
                            f"medseg grid was read with shape {tuple(stored_shape)}")
    return MedImage(array, meta)


def capture_request(layer: Any, options: EngineOptions, *,
                    region: tuple[tuple[int, int], ...] | None = None) -> SegmentRequest:
    """Snapshot an image layer for a run (GUI thread); ``region``: see ``SegmentRequest``.

    An RGB layer keeps its colour channels: the engine applies the model card's channel rule
    to them, as ``medseg-predict`` does to the colour file.

    Raises:
        GeometryError: The layer is multiscale, not 2D/3D, or does not fit its stored grid.
    """
    return SegmentRequest(layer=layer, layer_name=str(layer.name), image=layer_image(layer),
                          options=options, region=region)


class SegmenterCache:
    """Keeps the last loaded engine, so repeated runs with one model load it once.

    Thread-safe: loading happens in the worker thread while the GUI stays responsive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: EngineOptions | None = None
        self._segmenter: Any = None

    def get(self, options: EngineOptions) -> Any:
        """The engine for ``options`` (loaded on first use, or when the options change)."""
        from medseg.inference import Segmenter

        with self._lock:
            if self._key != options:
                self._segmenter = None  # free the previous model before loading the next
                self._segmenter = Segmenter.from_file(options.model, options.inference)
                self._key = options
            return self._segmenter


def run_request(
    request: SegmentRequest,
    cache: SegmenterCache,
    *,
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Any:
    """Run the engine on the captured image (worker thread); returns its ``Prediction``.

    Raises:
        CancelledError: ``should_cancel()`` turned true.
        ModelError: The model cannot be loaded or applied.
    """
    segmenter = cache.get(dataclasses.replace(request.options, uncertainty=False,
                                              probabilities=False))
    prediction = segmenter.predict(request.image, progress=progress, should_cancel=should_cancel,
                                   return_probabilities=request.options.uncertainty
                                   or request.options.probabilities,
                                   region=request.region)
    labels = prediction.labels
    if labels.spatial_shape != request.image.spatial_shape or not labels.meta.same_grid(
        request.image.meta
    ):
        raise ModelError(f"the engine returned labels of shape {labels.spatial_shape} off the "
                         f"grid of {request.layer_name!r} (shape {request.image.spatial_shape})")
    return prediction


def previous_results(layers: Any, request: SegmentRequest) -> list[Any]:
    """The layers an earlier run of the same model on the same image produced: its labels
    layer(s) and their uncertainty layers (what *replace* swaps for the new result)."""
    from napari_plugin._layers import MODEL_KEY, SOURCE_LAYER_KEY

    labels = [ly for ly in layers
              if ly.metadata.get(SOURCE_LAYER_KEY) == request.layer_name
              and ly.metadata.get(MODEL_KEY) == request.options.model]
    names = {f"{ly.name} {extra}" for ly in labels for extra in ("uncertainty", "probability")}
    return labels + [ly for ly in layers if ly.name in names]


def model_label_info(model: str) -> tuple[dict[int, str], dict[int, tuple[int, int, int]]]:
    """Label names and colours from a model's card (cheap: the weights are not read)."""
    from medseg.model_card import read_model_card
    from medseg.models import resolve_model

    card = read_model_card(resolve_model(model))
    return dict(card.label_names), dict(card.label_colors)


def result_layer_data(request: SegmentRequest, prediction: Any) -> LayerData:
    """The labels layer of a finished run, placed on the *captured* grid of its image."""
    names, colors = model_label_info(request.options.model)
    instances = bool(getattr(prediction, "instances", False))
    if instances:  # object ids 1..N: napari's own colours, no class names
        names, colors = {}, {}
    labels = MedImage(prediction.labels.array, request.image.meta)
    data, kwargs, kind = labels_layer_data(
        labels,
        name=request.result_name,
        label_names=names,
        label_colors=colors,
        source_layer=request.layer_name,
        model=request.options.model,
        instances=instances,
    )
    kwargs["metadata"][REGION_KEY] = ([list(r) for r in request.region]
                                      if request.region is not None else None)
    return data, kwargs, kind


def uncertainty_layer_data(request: SegmentRequest, prediction: Any) -> LayerData | None:
    """An image layer of the prediction's uncertainty (0 = certain, 1 = all classes equally
    likely) on the captured grid, or ``None`` when it was not asked for."""
    if not request.options.uncertainty or prediction.probabilities is None:
        return None
    from napari_plugin._geometry import image_layer_data

    u = prediction.uncertainty()
    (data, kwargs, kind), = image_layer_data(
        MedImage(u.array.astype("float32"), request.image.meta),
        name=f"{request.result_name} uncertainty")
    kwargs.update(colormap="magma", blending="additive", contrast_limits=(0.0, 1.0),
                  opacity=0.7)
    return data, kwargs, kind


def probability_layer_data(request: SegmentRequest, prediction: Any) -> LayerData | None:
    """An image layer of the foreground probability (``1 - p(background)``; the output
    itself for a single sigmoid) on the captured grid, or ``None`` when not asked for."""
    if not request.options.probabilities or prediction.probabilities is None:
        return None
    from napari_plugin._geometry import image_layer_data

    p = prediction.probabilities.array
    foreground = p[0].astype("float32") if p.shape[0] == 1 else 1.0 - p[0].astype("float32")
    (data, kwargs, kind), = image_layer_data(
        MedImage(foreground[None], request.image.meta),
        name=f"{request.result_name} probability")
    kwargs.update(colormap="viridis", blending="additive", contrast_limits=(0.0, 1.0),
                  opacity=0.6, visible=False)
    return data, kwargs, kind


@dataclass(frozen=True)
class Relabel:
    """What the threshold and minimum-size controls ask of a kept result.

    Attributes:
        probabilities: ``(K, *spatial)`` probabilities of the run (medseg order).
        spacing: The image's voxel spacing (for the size in voxels -> mL conversion).
        threshold: Foreground probability a voxel needs
            (:func:`medseg.inference.postprocess.labels_from_probabilities`).
        min_voxels: Objects (components of a class, or instances) smaller than this many
            voxels are removed; 0 keeps all.
        instances: The model card's ``instances`` entry for an instance model, else ``None``.
        postprocess: The run's class-map clean-up (keep-largest, hole filling: the card's
            default), repeated at every threshold; ``None``: none.
        per_slice: Holes are filled per slice (a 2D model's volume).
    """

    probabilities: np.ndarray
    spacing: tuple[float, ...]
    threshold: float = 0.5
    min_voxels: int = 0
    instances: dict[str, Any] | None = None
    postprocess: PostprocessConfig | None = None
    per_slice: bool = False


def relabel_job(request: SegmentRequest, prediction: Any) -> Relabel | None:
    """The :class:`Relabel` of a finished run at its current settings (the threshold its
    labels were drawn at, no minimum size), or ``None`` when its probabilities were not
    kept."""
    if not request.options.probabilities or prediction.probabilities is None:
        return None
    spec = None
    if getattr(prediction, "instances", False):  # the settings the run used (zoom included)
        spec = dict(getattr(prediction, "instance_settings", None) or {})
    return Relabel(probabilities=prediction.probabilities.array,
                   spacing=tuple(request.image.meta.spacing), instances=spec,
                   threshold=float(getattr(prediction, "threshold", 0.5)),
                   postprocess=None if spec is not None else getattr(prediction, "postprocess",
                                                                     None),
                   per_slice=bool(getattr(prediction, "per_slice", False)))


def relabel(job: Relabel) -> np.ndarray:
    """Labels (medseg order) of a kept result at a new threshold and minimum size, from its
    probabilities: the same clean-up and instance separation as the engine, no network run
    (worker thread)."""
    from medseg.inference.instances import instances_from_classes
    from medseg.inference.postprocess import clean_labels, labels_from_probabilities

    labels = labels_from_probabilities(job.probabilities, job.threshold)
    if job.instances:
        spec = dict(job.instances)
        if job.probabilities.shape[0] > 1:
            spec["foreground_threshold"] = job.threshold
        spec["min_size"] = max(int(spec.get("min_size", 1)), job.min_voxels)
        return instances_from_classes(labels, job.probabilities, spec)
    post = job.postprocess or PostprocessConfig()
    if job.min_voxels > 0:
        voxel_ml = math.prod(job.spacing) / 1000.0
        # just under the size: clean_labels rounds min_size_ml / voxel_ml up
        post = dataclasses.replace(post, min_size_ml=max(post.min_size_ml,
                                                         (job.min_voxels - 0.5) * voxel_ml))
    return clean_labels(labels, job.spacing, post, per_slice=job.per_slice)


def result_summary(prediction: Any) -> str:
    """One line for the user: objects for an instance model, areas for a 2D result (px^2
    without a pixel size), volumes in mL for a 3D one."""
    if getattr(prediction, "instances", False):
        return f"{prediction.num_objects} objects"
    if prediction.areas:
        return ", ".join(f"{k}: {v:.6g} {prediction.area_unit}"
                         for k, v in prediction.areas.items())
    return ", ".join(f"{k}: {v:.2f} mL" for k, v in prediction.volumes_ml.items()) \
        or "no foreground"


def model_card_summary(card: Any) -> str:
    """What the selected model is, before a run: what it segments, the input it is for, its
    training data and validation figures, and its licence/use terms (from the card)."""
    domain = card.domain or {}
    labels = "objects" if card.instances else \
        ", ".join(v for k, v in sorted(card.label_names.items()) if k)
    kind = "instances" if card.instances else "classes"
    lines = [f"{card.name}: {labels} ({kind}), {card.spatial_dims}D, "
             f"{domain.get('modality') or card.modality or 'modality not recorded'}"]
    if domain.get("intended_use"):
        lines.append(f"for: {domain['intended_use']}")
    if domain.get("limitations"):
        lines.append(f"not for: {domain['limitations']}")
    if domain.get("extent"):
        unit = domain.get("unit", "mm")
        lo = "x".join(f"{v:.3g}" for v in domain["extent"]["min"])
        hi = "x".join(f"{v:.3g}" for v in domain["extent"]["max"])
        lines.append(f"trained on {domain.get('num_cases', '?')} images of {lo} to {hi} {unit}"
                     + (" (synthetic)" if domain.get("synthetic") else ""))
    figures = evaluation_figures((card.training or {}).get("evaluation"))
    if figures:
        lines.append("validation: " + ", ".join(f"{k} {v:.3g}" for k, v in figures))
    text = card.description or ""
    for term in ("RESEARCH USE ONLY", "LICENCE", "licence", "Not for clinical use",
                 "not for clinical use", "CC0", "CC BY"):
        if term in text:
            lines.append("terms: see the model card (" + term + ")")
            break
    return "\n".join(lines)


#: Figures of a card's evaluation record worth a line in the widget (leaf names).
_HEADLINE = ("dice_mean", "dice", "ap50", "dsb_score", "misclassified", "rand_error",
             "pixel_error", "mean")


def evaluation_figures(evaluation: Any, limit: int = 4) -> list[tuple[str, float]]:
    """The headline numbers of a card's ``training.evaluation`` record: numeric leaves named
    like a score (Dice, AP, error), each named by its last two keys; case lists, commands and
    spreads are left to the card itself."""
    out: list[tuple[str, float]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if len(out) >= limit:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, str(key)))
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and path \
                and any(h in path[-1] or (len(path) > 1 and h == path[-2]) for h in _HEADLINE) \
                and "std" not in path[-1]:
            name = " ".join(k for k in path[-2:] if k not in ("labels", "summary"))
            out.append((name, float(node)))

    walk(evaluation, ())
    return out


def fit_banner(prediction: Any) -> tuple[str, str]:
    """``(text, level)`` of the banner shown on a result: how well the image fits the model's
    training domain (:mod:`medseg.inference.fit`)."""
    confidence = getattr(prediction, "confidence", None)
    low = [confidence.message] if confidence is not None and confidence.low else []
    report = getattr(prediction, "fit", None)
    if report is None or not report.checks:
        if low:
            return "CHECK THIS RESULT: " + low[0], "warn"
        return "fit: not checked", "ok"
    warnings = report.warnings
    if not warnings and not low:
        skipped = sum(c.level == "skipped" for c in report.checks)
        return ("fit: the image matches the model's training images"
                + (f" ({skipped} check(s) skipped)" if skipped else "")), "ok"
    return ("CHECK THIS RESULT: " + " | ".join(low + [c.message for c in warnings])), "warn"
