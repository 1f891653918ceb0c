"""The inference engine: load a model once, segment many images on their exact grids.

``Segmenter.predict`` runs: model-card preprocessing (resample to the model's spacing only when
it differs; intensity normalisation window by window) -> memory-bounded sliding-window
inference (reflection padding, Gaussian blending, optional mirror TTA, autocast) -> back onto
the input's exact grid -> optional clean-up -> volumes. Every stage is timed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.devices import autocast_dtype, resolve_device
from medseg.errors import CancelledError, DomainError, ModelError
from medseg.inference.confidence import CaseConfidence, confidence_of
from medseg.inference.fit import FitReport, check_input, check_output, spacing_unit
from medseg.inference.guard import ComputeLimitError, WorkEstimate, estimate_work, window_seconds
from medseg.inference.heap import keep_freed_memory, release_freed_memory, request_huge_pages
from medseg.inference.instances import instances_from_classes, scaled_instance_spec
from medseg.inference.options import InferenceOptions, merge_options
from medseg.inference.postprocess import (
    PostprocessConfig,
    area_unit,
    clean_labels,
    label_areas,
    label_volumes_ml,
    labels_from_probabilities,
)
from medseg.inference.preprocess import apply_card_channel_rule, window_normalizer
from medseg.inference.sliding_window import (
    CancelFn,
    ProgressFn,
    WindowOutputs,
    argmax_channels,
    autocast_context,
    run_window_grid,
    sliding_window_logits,
)
from medseg.inference.windows import WindowReader, plan_whole, plan_windows, reflect_pad
from medseg.io.image import ImageMeta, MedImage, check_box, fortran_spatial
from medseg.io.validation import check_voxel_count
from medseg.model_card import ModelCard, file_sha256, library_versions, load_model
from medseg.transforms import (
    resample_onto,
    resample_to_spacing,
    resampled_shape,
    spacing_matches,
)
from medseg.transforms.context import neighbour_slices, with_neighbour_slices
from medseg.transforms.onto_grid import argmax_onto, linear_onto, slabs

logger = logging.getLogger(__name__)

#: Mirrored copies of a window batch are run as one batch up to this many input voxels.
_TTA_BATCH_VOXELS = 1 << 21
#: Pixels of a volume's slices a 2D model runs per forward pass on a CPU with bf16: about what
#: stays in cache (4 slices of 256 x 256); in float32, whose activations take twice the bytes,
#: half that. Passes of 8 slices took 13-18% more time per slice in bf16 and 52-61% more in
#: float32 on an AMD EPYC (benchmarks/results/slice_batch.txt).
_CPU_SLICE_BATCH_PIXELS = 1 << 18
#: The same on a GPU, which wants larger passes.
_GPU_SLICE_BATCH_PIXELS = 1 << 19
#: A 2D model runs an image whole (one forward pass) up to this many padded pixels.
_WHOLE_IMAGE_PIXELS = 1 << 21
#: ``object_diameter`` zooms an image by at most this factor either way.
MAX_ZOOM = 2.0
#: ``object_diameter="auto"``: zoomed passes after the first at native pixels, at most (H&E
#: nuclei, models fine-tuned at one object scale, 3 folds of other images: pooled AP@0.5 at
#: native pixels 0.577 / 0.470 / 0.616, one re-estimate 0.648 / 0.545 / 0.618, two 0.641 /
#: 0.550 / 0.627, each image's true diameter 0.637 / 0.550 / 0.658;
#: benchmarks/results/finetune_he.txt).
AUTO_DIAMETER_PASSES = 2
#: ... and no further pass once the estimate is within this fraction of the diameter used.
AUTO_DIAMETER_TOLERANCE = 0.1


@dataclass
class Prediction:
    """The result of :meth:`Segmenter.predict`, on the input image's exact grid.

    Attributes:
        labels: One-channel label map (uint8, uint16 above 255 classes) with ``label_names``.
        probabilities: ``(K, *spatial)`` float16 softmax probabilities, when requested.
        timings: Seconds per stage: ``preprocess``, ``infer``, ``resample``, ``postprocess``.
        volumes_ml: Volume of each named foreground label in mL (3D images only).
        areas: Area of each named foreground label (2D images only), in ``area_unit``.
        area_unit: ``"px^2"`` for pixel images without a known pixel size (PNG, JPEG, most
            TIFF), ``"mm^2"`` when the image carries its spacing (a DICOM or NIfTI slice).
        num_windows: Sliding windows run (slices for a 2D model over a volume).
        instances: True when ``labels`` holds object ids 1..N (an instance model), not classes.
        num_objects: Objects in an instance result.
        fit: How well the image fits the model's training domain, input and predicted sizes
            (:mod:`medseg.inference.fit`); its warnings are also logged.
        region: The ``(start, stop)`` index range per axis the model ran on, when it ran on
            a box of the image only (``predict(..., region=...)``); ``None``: the whole image.
        model_grid: ``{"shape", "spacing"}`` of the grid the network ran on when the image
            was resampled for it (to the card's target spacing, zoomed by
            ``object_diameter``; with ``region``, the box's grid); ``None``: the input's own
            grid. A 2D model over a volume's slices records ``{"slice_shape"}`` instead, when
            each slice is resampled to the card's ``fov_pixels``. With
            ``object_diameter="auto"``, ``"object_diameter"`` holds the estimates, the diameter
            the image was zoomed by (``used``, within the zoom limit) and the model's.
        instance_settings: The instance settings the objects were made with (the card's
            ``instances``, its pixel settings scaled when ``object_diameter`` zoomed the image
            out); ``None`` for a semantic model. A relabelling of the kept probabilities
            (napari's threshold control) starts from these.
        confidence: How far the result can be trusted (the model's expected Dice,
            :mod:`medseg.inference.confidence`), flagged ``low`` below the card's threshold;
            computed when the card has a threshold or the probabilities were computed.
        work: The compute guard's estimate (:mod:`medseg.inference.guard`), made before the
            network ran: windows on the model grid, against the largest training image, and
            the seconds expected on this device.
        threshold: The foreground probability the labels were drawn at (the card's
            ``postprocess.threshold``; 0.5: the argmax of two classes).
        postprocess: The class-map clean-up the labels were made with (the options', else the
            card's default); a relabelling of the kept probabilities repeats it.
        per_slice: The clean-up's holes were filled per slice (a 2D model's volume).
    """

    labels: MedImage
    probabilities: MedImage | None = None
    timings: dict[str, float] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    num_windows: int = 0
    areas: dict[str, float] = field(default_factory=dict)
    area_unit: str = ""
    instances: bool = False
    num_objects: int | None = None
    fit: FitReport = field(default_factory=FitReport)
    region: tuple[tuple[int, int], ...] | None = None
    model_grid: dict[str, Any] | None = None
    instance_settings: dict[str, Any] | None = None
    confidence: CaseConfidence | None = None
    work: WorkEstimate | None = None
    threshold: float = 0.5
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    per_slice: bool = False

    def uncertainty(self) -> MedImage:
        """Normalised entropy of the probabilities, in ``[0, 1]`` (float16, one channel):
        0 where the model is certain, 1 where all classes are equally likely (for a single
        sigmoid output: the entropy of ``(p, 1 - p)`` over ``log 2``).

        Raises:
            ModelError: The prediction was made without ``return_probabilities=True``.
        """
        if self.probabilities is None:
            raise ModelError("uncertainty needs the probabilities: predict with "
                             "return_probabilities=True")
        p = self.probabilities.array
        fortran = fortran_spatial(p)
        out = np.empty((1, *p.shape[1:]), dtype=np.float16, order="F" if fortran else "C")
        axis = p.ndim - 1 if fortran else 1  # slabs along the slowest memory axis
        row_voxels = int(np.prod(p.shape[1:])) // p.shape[axis]
        for rows in slabs(p.shape[axis], row_voxels):  # no full-size float32 volume
            part = (slice(None),) * axis + (rows,)
            entropy = None
            for pc in _class_planes(p[part]):
                term = pc * np.log(np.clip(pc, 1e-12, None))
                entropy = -term if entropy is None else entropy - term
            assert entropy is not None
            entropy /= np.log(max(p.shape[0], 2))
            out[part] = np.clip(entropy, 0, 1)[None]
        return self.probabilities.with_array(out)


def _class_planes(p: np.ndarray) -> Iterator[np.ndarray]:
    """Each class's probability as float32, one at a time; a single sigmoid output ``p`` is
    the two classes ``1 - p`` and ``p`` (so its entropy is the binary one, over log 2)."""
    if p.shape[0] == 1:
        q = p[0].astype(np.float32)
        yield 1.0 - q
        yield q
        return
    for c in range(p.shape[0]):
        yield p[c].astype(np.float32)


def instance_norm_as_group_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every InstanceNorm by the equivalent GroupNorm (one group per channel), in place.

    The same normalisation (per sample and channel, over space) and the same parameters, but
    torch's CPU GroupNorm kernel works on channels-last bf16 tensors directly, where
    InstanceNorm reshapes, copies and runs in float32.
    """
    for name, child in model.named_children():
        if isinstance(child, torch.nn.modules.instancenorm._InstanceNorm) \
                and not child.track_running_stats:
            norm = torch.nn.GroupNorm(child.num_features, child.num_features, eps=child.eps,
                                      affine=child.affine)
            if child.affine:
                norm.weight = child.weight
                norm.bias = child.bias
            setattr(model, name, norm)
        else:
            instance_norm_as_group_norm(child)
    return model


def translate(t: torch.Tensor, dim: int, shift: float) -> torch.Tensor:
    """``t`` moved by ``shift`` voxels along ``dim`` (``out(p) = t(p - shift)``), linearly
    interpolated; values at the ends are repeated. Exact for whole-voxel shifts."""
    if shift == 0:
        return t
    n = t.shape[dim]
    pos = torch.arange(n, dtype=torch.float64, device=t.device) - shift
    low = pos.floor()
    frac = (pos - low).to(t.dtype).view([n if d == dim else 1 for d in range(t.dim())])
    i0 = low.long().clamp(0, n - 1)
    i1 = (low.long() + 1).clamp(0, n - 1)
    a = t.index_select(dim, i0)
    return a + (t.index_select(dim, i1) - a) * frac


def unmirror(t: torch.Tensor, axes: Sequence[int], label_offset: Sequence[float], *,
             first_spatial: int) -> torch.Tensor:
    """The prediction ``t`` of an input mirrored along ``axes``, flipped back.

    With a ``label_offset`` (voxels per spatial axis; spatial axes start at ``first_spatial``):
    a model that draws labels ``d`` off the structures draws them ``-d`` off on a mirrored
    input, so the flipped-back prediction is also moved by ``2d`` along each mirrored axis.
    """
    if not axes:
        return t
    t = t.flip(tuple(axes))
    for axis in axes if label_offset else ():
        t = translate(t, axis, 2.0 * label_offset[axis - first_spatial])
    return t


def _mirror_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of spatial axes of a ``(B, C, *spatial)`` tensor, the identity first."""
    axes = range(2, 2 + spatial_dims)
    return [c for n in range(spatial_dims + 1) for c in itertools.combinations(axes, n)]


class Segmenter:
    """Segments images with one model, loaded once.

    Args:
        model: The network (eval mode is set here).
        card: Its model card (preprocessing, window size, labels).
        options: The inference settings (:class:`~medseg.inference.options.InferenceOptions`:
            device, overlap, TTA, precision, windows, clean-up, memory mode). With TTA every
            mirroring of each window is averaged (2^d passes); with a card's ``label_offset``
            each mirrored prediction is moved back by twice it. With no clean-up asked for, the
            card's ``postprocess`` default (if it has one) applies.
        stitch_dtype: dtype of the stitching sums (see
            :func:`medseg.inference.sliding_window.run_window_grid`); ``None``: float16 when
            autocast is on (the sums are then more precise than the bf16/fp16 logits summed),
            float32 otherwise.
        model_path: The file the model came from (for provenance).
        **settings: Single settings of ``InferenceOptions`` (``device=``, ``overlap=``,
            ``tta=``, ... and ``postprocess=PostprocessConfig``) applied over ``options``.

    Raises:
        ModelError: Options the model cannot take: ``object_diameter`` for a model that
            records none, a class-map clean-up (``keep_largest``, ``min_size_ml``,
            ``fill_holes``) for an
            instance model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        options: InferenceOptions | None = None,
        *,
        stitch_dtype: torch.dtype | None = None,
        model_path: str | Path | None = None,
        **settings: Any,
    ) -> None:
        options = merge_options(options, **settings)
        self.inference_options = options
        if options.low_memory:
            release_freed_memory()  # smaller peak, slower forward passes (see inference.heap)
        self.device = resolve_device(options.device)
        if self.device.type == "cpu" and not options.low_memory:
            keep_freed_memory()  # no page faults for memory freed and taken again each pass
        self.card = card
        self.overlap = float(options.overlap)
        self.tta = bool(options.tta)
        self.amp_dtype = autocast_dtype(options.amp, self.device)
        self.sw_batch_size = int(options.sw_batch_size)
        self.margin = options.margin
        self.blend = options.blend
        postprocess = options.postprocess
        card_post = dict(card.postprocess or {})
        #: the foreground probability a voxel needs to be labelled (the card's, chosen on
        #: out-of-fold predictions; 0.5 is the argmax of two classes)
        self.decision_threshold = float(card_post.pop("threshold", 0.5))
        if not 0.0 < self.decision_threshold < 1.0:
            raise ModelError(f"model {card.name!r}: postprocess.threshold must be in (0, 1), "
                             f"got {self.decision_threshold!r}")
        if not postprocess.active:  # the model's own default, if any
            postprocess = PostprocessConfig(**card_post)
        if card.instances and postprocess.active:
            raise ModelError(f"model {card.name!r} separates objects (its card's "
                             "instances.min_size drops small ones): keep_largest, "
                             "min_size_ml and fill_holes clean class maps, and on its classes "
                             "would cut or merge objects")
        self.postprocess = postprocess
        self.channels_last = (self.device.type == "cpu") if options.channels_last is None \
            else options.channels_last
        if stitch_dtype is None:  # as precise as the windows: bf16/fp16 logits fit float16 sums
            stitch_dtype = torch.float16 if self.amp_dtype is not None else torch.float32
        self.stitch_dtype = stitch_dtype
        self.model_path = Path(model_path) if model_path is not None else None
        self._weights_sha256: str | None = None
        self._calibration_key: tuple[Any, ...] | None = None
        plan_windows(card.roi_size, card.roi_size, overlap=self.overlap,  # validate
                     margin=self.margin)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=self._memory_format)
        #: the diameter every image is zoomed by: the options', else the card's default
        self.object_diameter: float | str | None = (
            options.object_diameter if options.object_diameter is not None
            else (card.instances or {}).get("object_diameter"))
        if self.object_diameter is not None:
            self._trained_diameter()  # refused now, not once per image of a batch
        self._flips = _mirror_axes(card.spatial_dims) if self.tta else [()]
        self._label_offset = card.label_offset

    @classmethod
    def from_file(cls, name_or_path: str | Path, options: InferenceOptions | None = None,
                  **settings: Any) -> Segmenter:
        """Load a shipped model by name or a ``.safetensors`` model file (see ``__init__``)."""
        from medseg.models import resolve_model

        options = merge_options(options, **settings)
        path = resolve_model(name_or_path)
        device = resolve_device(options.device)
        if options.low_memory:
            request_huge_pages()  # torch reads it at its first large buffer: before the weights
        model, card = load_model(path, device=device)
        if device.type == "cpu":  # the model is ours: swap in the faster CPU normalisation
            instance_norm_as_group_norm(model)
        logger.info("loaded model %s (%s) on %s", card.name, path, device)
        return cls(model, card, options.replace(device=str(device)), model_path=path)

    # -- provenance ----------------------------------------------------------------------------
    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.card.spatial_dims == 3 else torch.channels_last

    def options(self) -> dict[str, Any]:
        """The settings that shape a prediction (recorded with every output)."""
        return {
            "overlap": self.overlap, "tta": self.tta, "sw_batch_size": self.sw_batch_size,
            "margin": self.margin, "blend": self.blend, "channels_last": self.channels_last,
            "stitch_dtype": str(self.stitch_dtype).replace("torch.", ""),
            "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            "keep_largest": self.postprocess.keep_largest,
            "min_size_ml": self.postprocess.min_size_ml,
            "fill_holes": self.postprocess.fill_holes, "roi_size": list(self.card.roi_size),
            "threshold": self.decision_threshold,
            "target_spacing": self.card.target_spacing,
            "low_memory": self.inference_options.low_memory,
            "whole_image": self.inference_options.whole_image,
            "object_diameter": self.object_diameter,
        }

    def provenance(self) -> dict[str, Any]:
        """What produced a prediction: versions, model identity (card and weights hashes)."""
        if self._weights_sha256 is None and self.model_path is not None:
            self._weights_sha256 = file_sha256(self.model_path)
        return {
            "versions": library_versions(),
            "model_name": self.card.name,
            "model_path": str(self.model_path) if self.model_path else None,
            "model_card_sha256": self.card.hash(),
            "weights_sha256": self._weights_sha256,
            "device": str(self.device),
            "options": self.options(),
            "inference_options": self.inference_options.to_dict(),
        }

    # -- prediction ------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of windows, averaged over mirrorings when TTA is on.

        Small windows run all their mirrorings as one batch (better use of the CPU/GPU than
        many tiny passes); large ones one mirroring at a time to bound activation memory.
        """
        flips = self._flips
        if len(flips) == 1:  # logits as the network gives them (bf16 under autocast): the
            with autocast_context(self.device, self.amp_dtype):  # stitcher casts them once
                return self._net(x)
        together = x.numel() * len(flips) <= _TTA_BATCH_VOXELS
        with autocast_context(self.device, self.amp_dtype):
            if together:
                batch = torch.cat([x.flip(axes) if axes else x for axes in flips])
                outputs = self._net(batch).split(x.shape[0])
            else:
                outputs = [self._net(x.flip(axes) if axes else x) for axes in flips]
            total: torch.Tensor | None = None
            for axes, y in zip(flips, outputs, strict=True):
                y = unmirror(y.float(), axes, self._label_offset, first_spatial=2)
                total = y if total is None else total.add_(y)
        assert total is not None
        return total / len(flips)

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=self._memory_format)
        return self.model(x)

    def _stitch_device(self, band_shape: tuple[int, ...]) -> torch.device:
        """The compute device if the stitching sums and weights (bounded by ``band_shape``) take
        under a quarter of its free memory, else the CPU: windows still run on the GPU, results
        stream back."""
        if self.device.type != "cuda":
            return self.device
        itemsize = torch.empty(0, dtype=self.stitch_dtype).element_size()
        band_bytes = itemsize * (self.card.num_classes + 1) * math.prod(band_shape)
        free, _ = torch.cuda.mem_get_info(self.device)
        if band_bytes < free // 4:
            return self.device
        logger.info("stitching on the CPU: %.1f GB of sums do not fit beside the network in "
                    "%.1f GB free on %s", band_bytes / 1e9, free / 1e9, self.device)
        return torch.device("cpu")

    def _adapt_input(self, image: MedImage) -> MedImage:
        """``image`` as the model takes it: the card's ``channel_rule`` applied, or its
        ``input_channels`` picked from a multi-channel input; a 2D model accepts a volume (run
        slice by slice).

        Raises:
            ModelError: Wrong dimensionality or channel count, with what the model expects.
        """
        source = image.meta.provenance.path or "the input image"
        dims = self.card.spatial_dims
        if image.meta.ndim != dims and not (dims == 2 and image.meta.ndim == 3):
            raise ModelError(f"{source}: model {self.card.name!r} is {dims}D but the image is "
                             f"{image.meta.ndim}D (shape {image.spatial_shape}); a 3D model "
                             "needs a volume")
        if dims == 3 and min(image.spatial_shape) == 1:
            files = len(image.meta.provenance.files or ())
            hint = (" (a one-file DICOM series is often a slice split off a larger series by a "
                    "damaged SeriesInstanceUID)" if files == 1 else "")
            raise ModelError(f"{source}: model {self.card.name!r} is 3D but the image is a "
                             f"single slice (shape {image.spatial_shape}){hint}; a 3D model "
                             "needs a volume")
        image = apply_card_channel_rule(image, self.card)
        expected = self.card.image_channels
        picks = self.card.input_channels
        if image.num_channels != expected and picks and len(picks) == expected \
                and max(picks) < image.num_channels:
            return image.with_array(image.array[list(picks)])
        if image.num_channels != expected:
            hint = f" (it takes channel(s) {picks} of a multi-channel image)" if picks else ""
            raise ModelError(f"{source}: model {self.card.name!r} expects {expected} channel(s)"
                             f"{hint} but the image has {image.num_channels}")
        return image

    def predict(
        self,
        image: MedImage,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        return_probabilities: bool = False,
        region: Sequence[tuple[int, int]] | None = None,
    ) -> Prediction:
        """Segment one image; the labels come back on ``image``'s exact grid.

        Args:
            image: Channel-first image with its geometry (any dtype; not modified).
            progress: ``progress(windows_done, windows_total)`` after every batch of windows.
            should_cancel: Polled between windows; returning ``True`` raises ``CancelledError``.
            return_probabilities: Also return float16 softmax probabilities.
            region: Run the model on this box only, one ``(start, stop)`` voxel index range
                per spatial axis (``MedImage.crop``): the model sees exactly the box's voxels
                (as a model trained on crops expects), and the result is placed back on the
                whole image's grid, background (probability 1 of class 0) outside the box.
                The fit report and the sizes are those of the box.

        Raises:
            ModelError: Wrong dimensionality or number of channels for this model.
            DomainError: With ``strict`` options, the image does not fit the model's training
                domain (the input is checked before the network runs, the predicted label
                sizes after it).
            GeometryError: ``region`` is not a box inside the image.
            ComputeLimitError: The case's work is more than ``max_work`` times the largest
                training image's (:mod:`medseg.inference.guard`; not with ``force``); refused
                before the network runs.
            CancelledError: ``should_cancel()`` returned ``True``.
        """
        if region is not None:
            box = check_box(region, image.spatial_shape)
            inside = self.predict(image.crop(box), progress=progress,
                                  should_cancel=should_cancel,
                                  return_probabilities=return_probabilities)
            return _placed_in(inside, image, box)
        image = self._adapt_input(image)
        t = time.perf_counter()
        fit = check_input(image, self.card)
        fit_s = time.perf_counter() - t
        self._refuse_if_strict(image, fit)  # input misfits: before the network runs
        work = self._estimate_work(image)
        if work.refused:  # orders of magnitude beyond the training images: before it runs
            raise ComputeLimitError(work.reason(image.meta.provenance.path or "the image",
                                                self.card), work)
        run = dict(progress=progress, should_cancel=should_cancel,
                   return_probabilities=return_probabilities)
        prediction = (self._predict_auto(image, **run) if self.object_diameter == "auto" else
                      self._predict(image, diameter=self.object_diameter, **run))
        t = time.perf_counter()
        sizes, unit = ((prediction.volumes_ml, "mL") if image.meta.ndim == 3
                       else (prediction.areas, prediction.area_unit))
        grid = prediction.model_grid or {}
        if unit == "px^2" and "spacing" in grid and self.object_diameter is not None:
            # zoomed for the objects' diameter: sizes compared at the scale the model learnt
            shrink = math.prod(float(g) / float(s) for g, s in
                               zip(grid["spacing"], image.meta.spacing, strict=True))
            sizes = {name: value / shrink for name, value in sizes.items()}
        fit.checks += check_output(sizes, unit, self.card)
        prediction.fit = fit
        prediction.work = work
        prediction.timings["fit"] = fit_s + time.perf_counter() - t
        self._refuse_if_strict(image, fit)  # predicted sizes outside the training range
        for check in fit.warnings:
            logger.info("%s: %s", image.meta.provenance.path or "image", check.message)
        return prediction

    def estimate_work(self, image: MedImage, *,
                      region: Sequence[tuple[int, int]] | None = None) -> WorkEstimate:
        """The compute guard's estimate for ``image`` (inside ``region``), as :meth:`predict`
        makes it before the network runs: sliding windows on the model grid, against the
        largest training image, and the seconds they take on this device (measured once per
        model and settings in this process). ``refused`` says whether :meth:`predict` would
        refuse it (see ``InferenceOptions.max_work`` and ``force``).

        Raises:
            ModelError: Wrong dimensionality or number of channels for this model.
            GeometryError: ``region`` is not a box inside the image.
        """
        if region is not None:
            image = image.crop(check_box(region, image.spatial_shape))
        return self._estimate_work(self._adapt_input(image))

    def _estimate_work(self, image: MedImage) -> WorkEstimate:
        """:meth:`estimate_work` of an adapted image."""
        slices = None
        batch = self.sw_batch_size
        if self.card.spatial_dims == 2 and image.meta.ndim == 3:  # a 2D model slice by slice
            slices = image.spatial_shape[2]
            grid: Sequence[int] = (tuple(self.card.fov_pixels) if self.card.fov_pixels
                                   else image.spatial_shape[:2])
            batch = self._slices_per_pass(grid)
        else:
            # "auto": the largest pass it may make (the image zoomed in the most)
            fixed = (self.object_diameter if self.object_diameter != "auto"
                     else self._trained_diameter() / MAX_ZOOM)
            resampled = self._model_grid(image, fixed)
            grid = resampled[1] if resampled is not None else image.spatial_shape
        options = self.inference_options
        return estimate_work(self.card, grid, slices=slices, overlap=self.overlap,
                             margin=self.margin, max_work=options.max_work,
                             force=options.force, device=str(self.device),
                             seconds_per_window=lambda: self._window_seconds(batch))

    def _slices_per_pass(self, slice_shape: Sequence[int]) -> int:
        """Slices of a volume a 2D model runs per forward pass (see :meth:`_predict_slices`):
        :data:`_CPU_SLICE_BATCH_PIXELS` of them on a CPU (half in float32), at least
        ``sw_batch_size``."""
        if self.device.type == "cpu":
            pixels = _CPU_SLICE_BATCH_PIXELS // (1 if self.amp_dtype is not None else 2)
        else:
            pixels = _GPU_SLICE_BATCH_PIXELS
        return max(1, self.sw_batch_size, pixels // max(1, math.prod(slice_shape)))

    def _window_seconds(self, batch: int) -> float:
        """One window's share of a forward pass of ``batch`` windows (as the engine batches
        them) on this device with these settings, measured once per process
        (:func:`medseg.inference.guard.window_seconds`)."""
        if self._calibration_key is None:
            self._calibration_key = (
                self.card.hash(), str(self.device), self.tta, str(self.amp_dtype),
                self.channels_last, torch.get_num_threads())
        shape = (batch, self.card.network.in_channels, *self.card.roi_size)
        # normalised-image-like values (zeros can take other, faster or slower, paths)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(self.device)

        def run_window() -> None:
            with torch.inference_mode():
                self._forward(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        return window_seconds((*self._calibration_key, batch), run_window) / batch

    def _refuse_if_strict(self, image: MedImage, fit: FitReport) -> None:
        if self.inference_options.strict and fit.warnings:
            raise DomainError(f"{image.meta.provenance.path or 'the image'}: strict run, and the "
                              f"image does not fit model {self.card.name!r}: "
                              + "; ".join(c.message for c in fit.warnings))

    def _spacing_comparable(self, image: MedImage) -> bool:
        """May ``image`` be resampled to the card's target spacing? Not when the model was
        trained on images without a pixel size (domain unit px: the DSB2018 PNGs, the ISBI
        2012 TIFF) and the image has one: those models work on native pixels, since a
        microscopy TIFF's pixel size in micrometres says nothing about the magnification they
        were trained at (reading 0.325 um as 0.325 px shrank the image threefold). Every
        other pairing is resampled as before (cards without a domain count as mm)."""
        unit = (self.card.domain or {}).get("unit", "mm")
        return unit != "px" or spacing_unit(image) == "px"

    def _trained_diameter(self) -> float:
        """The card's object diameter in pixels (``domain.object_diameter``).

        Raises:
            ModelError: The model records none (not an instance model trained on images
                without a pixel size), so ``object_diameter`` cannot be used with it.
        """
        trained = self.card.object_diameter_px
        if trained is None:
            raise ModelError(f"model {self.card.name!r} records no object diameter in pixels "
                             "(only instance models trained on images without a pixel size "
                             "do): object_diameter cannot be used with it")
        return trained

    def _model_grid(self, image: MedImage, diameter: float | None = None
                    ) -> tuple[list[float], tuple[int, ...]] | None:
        """The spacing and shape ``image`` is resampled to before the network (``None``: as
        it is): the card's target spacing (when :meth:`_spacing_comparable`), zoomed by
        ``object_diameter`` when set. A zoomed grid spans the image exactly (first and last
        pixel centres coincide), so every input pixel gets its result back."""
        spacing = [float(s) for s in image.meta.spacing]
        target = self.card.target_spacing if self._spacing_comparable(image) else None
        wanted = diameter
        if wanted is None:
            if not target or spacing_matches(spacing, target):
                return None
            shape = resampled_shape(image.spatial_shape, spacing, target)
            return [float(t) for t in target], shape
        zoom = float(np.clip(self._trained_diameter() / float(wanted), 1 / MAX_ZOOM, MAX_ZOOM))
        base = [float(t) for t in target] if target else spacing
        shape = tuple(max(2, round(n * s / b * zoom)) if n > 1 else 1
                      for n, s, b in zip(image.spatial_shape, spacing, base, strict=True))
        if shape == tuple(image.spatial_shape):
            return None
        return [s * (n - 1) / (m - 1) if n > 1 else s
                for n, m, s in zip(image.spatial_shape, shape, spacing, strict=True)], shape

    def _predict_auto(self, image: MedImage, **kwargs: Any) -> Prediction:
        """:meth:`_predict` with ``object_diameter="auto"``: a first pass at native pixels,
        then up to :data:`AUTO_DIAMETER_PASSES` more, each zoomed by the diameter estimated
        from the pass before (:func:`medseg.inference.diameter.estimate_diameter`), until the
        estimate moves by less than :data:`AUTO_DIAMETER_TOLERANCE`. The estimate is
        recorded in ``model_grid["object_diameter"]``. A volume runs at native pixels."""
        from medseg.inference.diameter import estimate_diameter

        prediction = self._predict(image, diameter=None, **kwargs)
        if self.card.spatial_dims == 2 and image.meta.ndim == 3:
            return prediction
        trained = used = self._trained_diameter()
        estimates: list[float] = []
        timings = dict(prediction.timings)
        for _ in range(AUTO_DIAMETER_PASSES):
            estimate = estimate_diameter(np.asarray(prediction.labels.array[0]) > 0)
            if estimate is None:
                break
            estimates.append(round(estimate, 2))
            # the zoom the engine can make (at most MAX_ZOOM either way)
            estimate = float(np.clip(estimate, trained / MAX_ZOOM, trained * MAX_ZOOM))
            if abs(math.log(estimate / used)) < math.log1p(AUTO_DIAMETER_TOLERANCE):
                break
            prediction = self._predict(image, diameter=estimate, **kwargs)
            used = estimate
            for stage, seconds in prediction.timings.items():  # every pass's time counts
                timings[stage] = timings.get(stage, 0.0) + seconds
        prediction.timings = timings
        prediction.model_grid = {**(prediction.model_grid or {}), "object_diameter": {
            "mode": "auto", "estimates": estimates, "used": round(used, 2),
            "trained": round(trained, 2)}}
        return prediction

    def _predict(self, image: MedImage, *, progress: ProgressFn | None,
                 should_cancel: CancelFn | None, return_probabilities: bool,
                 diameter: float | None) -> Prediction:
        """:meth:`predict` after the input is adapted and checked, the image zoomed by
        ``diameter`` (``None``: native pixels)."""
        # instance models separate objects on the softmax: they always need it
        # so do a confidence threshold
        want_probabilities = (return_probabilities or bool(self.card.instances)
                              or bool(self.card.confidence) or self.decision_threshold != 0.5)
        if self.card.spatial_dims == 2 and image.meta.ndim == 3:
            if diameter is not None and abs(diameter / self._trained_diameter() - 1) > 1e-6:
                raise ModelError(f"{image.meta.provenance.path or 'the image'}: "
                                 "object_diameter zooms 2D images; this one is a volume")
            # a confidence (or a two-class threshold) needs only the foreground probability:
            # half the memory traffic of every class's
            every_class = (return_probabilities or bool(self.card.instances)
                           or (self.decision_threshold != 0.5 and self.card.num_classes > 2))
            prediction = self._finish(image, *self._predict_slices(
                image, progress=progress, should_cancel=should_cancel,
                probabilities=want_probabilities, foreground_only=not every_class),
                return_probabilities=return_probabilities)
            fov = self.card.fov_pixels
            if fov and list(fov) != list(image.spatial_shape[:2]):
                prediction.model_grid = {"slice_shape": [int(n) for n in fov]}
            return prediction
        if self.card.context_slices:  # a 2.5D model on one 2D image: its own neighbours
            image = image.with_array(with_neighbour_slices(image.array,
                                                           self.card.context_slices))
        timings: dict[str, float] = {}
        t = time.perf_counter()
        work = image
        grid = self._model_grid(image, diameter)
        resample = grid is not None
        if grid is not None:
            target, shape = grid
            check_voxel_count((image.num_channels, *shape),
                              source=f"model {self.card.name!r} at spacing "
                              f"{[round(t, 4) for t in target]}")
            # a zoom for object_diameter stands for another magnification: shrinking is
            # anti-aliased as optics would (an image resampled to the card's spacing is
            # resampled as its training images were, linearly)
            work = _to_model_grid(image, target, shape,
                                  antialias=diameter is not None)
        # Outputs take the input's memory layout: a NIfTI volume (first axis fastest) gets its
        # labels back in that order, and writing them is a plain copy, not a transpose.
        order = "F" if fortran_spatial(image.array) else "C"
        timings["preprocess"] = time.perf_counter() - t
        whole = self._whole_plan(work.spatial_shape)
        if whole is not None:
            t = time.perf_counter()
            x = torch.from_numpy(window_normalizer(work.array, self.card.normalization)(
                work.array))[None]
            timings["preprocess"] += time.perf_counter() - t
            t = time.perf_counter()
            out = self._whole_outputs(x, whole, labels=not resample,
                                      probabilities=resample or want_probabilities, order=order)
            if progress is not None:
                progress(1, 1)
            timings["infer"] = time.perf_counter() - t
        else:
            out = self._windowed_outputs(work, timings, labels=not resample,
                                         probabilities=resample or want_probabilities,
                                         order=order, progress=progress,
                                         should_cancel=should_cancel)

        t = time.perf_counter()
        if resample:
            assert out.probabilities is not None
            labels, probabilities = _resample_back(
                out.probabilities, work.meta, image.meta, image.spatial_shape,
                keep_probabilities=want_probabilities, order=order)
        else:
            assert out.labels is not None
            labels, probabilities = out.labels, out.probabilities
        timings["resample"] = time.perf_counter() - t
        # objects are separated on the input's pixels: zooming out for object_diameter scales
        # the card's pixel settings (chosen at the model's scale) by input pixels per model
        # pixel; zooming in keeps them (below a pixel, h and max_grow pick up pixel noise;
        # benchmarks/results/nuclei_diameter.txt)
        scale = 1.0
        if grid is not None and diameter is not None:
            scale = max(1.0, float(np.mean([g / s for g, s in zip(grid[0], image.meta.spacing,
                                                                  strict=True)])))
        prediction = self._finish(image, labels, probabilities, timings, out.num_windows,
                                  return_probabilities=return_probabilities,
                                  instance_scale=scale)
        if grid is not None:
            prediction.model_grid = {"shape": [int(n) for n in grid[1]],
                                     "spacing": [float(v) for v in grid[0]]}
        return prediction

    def _windowed_outputs(self, work: MedImage, timings: dict[str, float], *, labels: bool,
                          probabilities: bool, order: str, progress: ProgressFn | None,
                          should_cancel: CancelFn | None) -> WindowOutputs:
        """Labels and/or probabilities of ``work`` by the sliding window (timed into
        ``timings``: ``preprocess`` from the caller's start, ``infer``)."""
        t = time.perf_counter()
        grid = plan_windows(work.spatial_shape, self.card.roi_size, overlap=self.overlap,
                            margin=self.margin)
        reader = WindowReader(work.array, grid,
                              transform=window_normalizer(work.array, self.card.normalization))
        timings["preprocess"] += time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode():
            out = run_window_grid(
                reader, self._forward, device=self.device,
                stitch_device=self._stitch_device(grid.band_shape),
                stitch_dtype=self.stitch_dtype, blend=self.blend,
                sw_batch_size=self.sw_batch_size, labels=labels,
                probabilities=probabilities, labels_order=order,
                progress=progress,
                should_cancel=should_cancel,
            )
        timings["infer"] = time.perf_counter() - t
        return out

    def _whole_plan(self, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """``(pad_before, padded_shape)`` when a 2D model runs an image of ``shape`` whole (see
        ``InferenceOptions.whole_image``), else ``None`` (sliding window)."""
        choice = self.inference_options.whole_image
        if self.card.spatial_dims != 2 or len(shape) != 2 or choice is False:
            return None
        plan = plan_whole(shape, self.card.roi_size, self.card.network.divisor,
                          overlap=self.overlap, margin=self.margin)
        return plan if choice or math.prod(plan[1]) <= _WHOLE_IMAGE_PIXELS else None

    def _whole_logits(self, x: torch.Tensor,
                      plan: tuple[tuple[int, ...], tuple[int, ...]]) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` (float32, CPU) of normalised images ``x`` ``(B, C, H, W)``
        run whole: reflection-padded by ``plan``, one forward pass, cropped back."""
        before, padded = plan
        with torch.inference_mode():
            y = self._forward(reflect_pad(x.to(self.device), before, padded)).float()
        crop = tuple(slice(b, b + n) for b, n in zip(before, x.shape[2:], strict=True))
        return y[(slice(None), slice(None), *crop)].cpu()

    def _whole_outputs(self, x: torch.Tensor, plan: tuple[tuple[int, ...], tuple[int, ...]], *,
                       labels: bool, probabilities: bool, order: str) -> WindowOutputs:
        """What :meth:`_windowed_outputs` gives, for one image run whole."""
        logits = self._whole_logits(x, plan)[0]
        k = logits.shape[0]
        out = WindowOutputs(num_windows=1)
        if labels:
            lab = argmax_channels(logits, dtype=torch.uint8 if k <= 256 else torch.int32).numpy()
            out.labels = np.asarray(lab.astype(np.uint8 if k <= 256 else np.uint16, copy=False),
                                    order=order)
        if probabilities:
            p = logits.sigmoid() if k == 1 else logits.softmax(0)
            out.probabilities = p.half().numpy()
        return out

    def _finish(self, image: MedImage, labels: np.ndarray, probabilities: np.ndarray | None,
                timings: dict[str, float], num_windows: int, *,
                return_probabilities: bool, instance_scale: float = 1.0) -> Prediction:
        """Clean-up, instances (for instance models) and measurements of a class map on the
        input grid."""
        t = time.perf_counter()
        meta = image.meta.replace(
            label_names={k: v for k, v in self.card.label_names.items() if k != 0})
        if self.decision_threshold != 0.5 and probabilities is not None \
                and not self.card.instances:  # (a one-channel foreground reads as a sigmoid's)
            labels = labels_from_probabilities(probabilities, self.decision_threshold)
        labels = clean_labels(labels, image.meta.spacing, self.postprocess,
                              per_slice=self.card.spatial_dims == 2)
        instances = bool(self.card.instances)
        num_objects = None
        spec = None
        if instances:
            spec = scaled_instance_spec(self.card.instances, instance_scale, labels.ndim)
            labels = instances_from_classes(labels, probabilities, spec)
            num_objects = int(labels.max())
            meta = meta.replace(label_names={})
        volumes: dict[str, float] = {}
        areas: dict[str, float] = {}
        unit = ""
        if image.meta.ndim == 3:  # an instance map: the volume of all its objects together
            volumes = label_volumes_ml(labels, image.meta.spacing, meta.label_names,
                                       instances=instances)
        else:
            unit = area_unit(image.meta)
            areas = label_areas(labels, image.meta.spacing, meta.label_names,
                                instances=instances)
        confidence = None
        if probabilities is not None:
            judged = self.card.confidence or {}
            confidence = confidence_of(probabilities, labels,
                                       threshold=judged.get("threshold"),
                                       rule=judged.get("score", "expected_dice"),
                                       what="object" if instances else
                                       "lesion" if image.meta.ndim == 3 else "region")
            if confidence.low:
                logger.warning("%s: %s", image.meta.provenance.path or "image",
                               confidence.message)
        timings["postprocess"] = time.perf_counter() - t
        logger.info("predicted %s: %d windows, %s", image.meta.provenance.path or "image",
                    num_windows, {k: round(v, 3) for k, v in timings.items()})
        return Prediction(
            labels=MedImage(labels[None], meta),
            probabilities=(MedImage(probabilities, meta.replace(label_names={}))
                           if return_probabilities and probabilities is not None else None),
            timings=timings, volumes_ml=volumes, num_windows=num_windows, areas=areas,
            area_unit=unit, instances=instances, num_objects=num_objects,
            instance_settings=spec, confidence=confidence, threshold=self.decision_threshold,
            postprocess=self.postprocess, per_slice=self.card.spatial_dims == 2,
        )

    def _predict_slices(self, image: MedImage, *, progress: ProgressFn | None,
                        should_cancel: CancelFn | None, probabilities: bool,
                        foreground_only: bool = False
                        ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float], int]:
        """A 2D model over every slice of a volume along its last (acquisition) axis.

        The volume is normalised as a whole (its statistics, as in training on stacked
        slices); with the card's ``fov_pixels`` each slice is resampled so its field of view
        spans that many pixels (bilinear, antialiased when shrinking), and the logits come back
        to the slice's own pixels bilinearly before the argmax. Slices that fit the window run
        whole, several per forward pass (see ``InferenceOptions.whole_image``); larger ones go
        through the sliding window. A model with ``context_slices`` gets each slice's
        neighbours as extra channels (:mod:`medseg.transforms.context`). With
        ``foreground_only`` the probabilities kept are one channel, the probability of any
        foreground class (what :mod:`medseg.inference.confidence` reads).
        """
        import torch.nn.functional as F

        timings: dict[str, float] = {}
        t = time.perf_counter()
        normalise = window_normalizer(image.array, self.card.normalization)
        shape = image.spatial_shape
        fov = tuple(self.card.fov_pixels) if self.card.fov_pixels else shape[:2]
        roi = tuple(self.card.roi_size)
        k = self.card.num_classes
        context = self.card.context_slices
        labels = np.zeros(shape, dtype=np.uint8 if k <= 256 else np.uint16)
        # slice-major memory ((slice, class, row, column) viewed as (class, row, column,
        # slice)): each batch of slices is one contiguous block, written as one copy instead
        # of a scatter along the last axis (which cost a 2D volume model a fifth of its time)
        # the foreground probability alone (for the confidence) stays float32: no conversion
        # on the way in or out, in the bytes of two float16 classes
        kept, dtype = (1, np.float32) if foreground_only else (k, np.float16)
        probs = (np.zeros((shape[2], kept, *shape[:2]), dtype=dtype).transpose(1, 2, 3, 0)
                 if probabilities else None)
        timings["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        whole = self._whole_plan(fov)
        per_pass = self._slices_per_pass(fov)
        with torch.inference_mode():
            for z0 in range(0, shape[2], per_pass):
                if should_cancel is not None and should_cancel():
                    raise CancelledError("prediction cancelled")
                z1 = min(shape[2], z0 + per_pass)
                # with context slices, the k neighbours on either side come along as channels
                # (with_neighbour_slices' order, gathered from the slice-major chunk in one copy)
                lo, hi = max(0, z0 - context), min(shape[2], z1 + context)
                chunk = np.ascontiguousarray(
                    normalise(image.array[..., lo:hi]).transpose(3, 0, 1, 2))
                if context:
                    near = neighbour_slices(z0, z1, shape[2], context) - lo
                    chunk = chunk[near].reshape(z1 - z0, -1, *chunk.shape[2:])
                x = torch.from_numpy(chunk).to(self.device)
                if fov != shape[:2]:
                    x = F.interpolate(x, size=fov, mode="bilinear", align_corners=False,
                                      antialias=fov[0] < shape[0] or fov[1] < shape[1])
                if whole is not None:
                    logits = self._whole_logits(x, whole)
                else:
                    logits = torch.stack([
                        sliding_window_logits(self._forward, x[i], roi_size=roi,
                                              overlap=self.overlap, device=self.device,
                                              margin=self.margin, blend=self.blend)
                        for i in range(x.shape[0])])
                if fov != shape[:2]:
                    logits = F.interpolate(logits, size=shape[:2], mode="bilinear",
                                           align_corners=False)
                logits = logits.cpu()
                if k == 1:
                    labels[..., z0:z1] = (logits[:, 0] >= 0).permute(1, 2, 0).numpy()
                else:
                    labels[..., z0:z1] = logits.argmax(1).permute(1, 2, 0).numpy()
                if probs is not None:
                    if k == 1:
                        p = logits.sigmoid()
                    elif foreground_only and k == 2:  # softmax's class 1, in one sigmoid
                        p = (logits[:, 1:2] - logits[:, 0:1]).sigmoid()
                    elif foreground_only:
                        p = 1.0 - logits.softmax(1)[:, 0:1]
                    else:
                        p = logits.softmax(1)
                    probs.transpose(3, 0, 1, 2)[z0:z1] = p.to(
                        torch.float32 if foreground_only else torch.float16).numpy()
                if progress is not None:
                    progress(z1, shape[2])
        timings["infer"] = time.perf_counter() - t
        timings["resample"] = 0.0
        return labels, probs, timings, shape[2]


def _placed_in(inside: Prediction, image: MedImage, box: tuple[tuple[int, int], ...]
               ) -> Prediction:
    """A prediction made on ``image.crop(box)``, put back on ``image``'s whole grid."""
    where = (slice(None), *(slice(a, b) for a, b in box))
    order = "F" if fortran_spatial(inside.labels.array) else "C"

    def placed(part: MedImage, fill: Sequence[float]) -> MedImage:
        full = np.empty((part.num_channels, *image.spatial_shape), dtype=part.array.dtype,
                        order=order)
        full[...] = np.asarray(fill, dtype=part.array.dtype).reshape(
            (-1,) + (1,) * image.meta.ndim)
        full[where] = part.array
        return MedImage(full, image.meta.replace(label_names=part.meta.label_names))

    probabilities = inside.probabilities
    if probabilities is not None:  # outside the box: certain background
        k = probabilities.num_channels
        probabilities = placed(probabilities, [1.0] + [0.0] * (k - 1) if k > 1 else [0.0])
    return dataclasses.replace(inside, labels=placed(inside.labels, [0]),
                               probabilities=probabilities, region=box)


def _to_model_grid(image: MedImage, spacing: Sequence[float], shape: tuple[int, ...], *,
                   antialias: bool = False) -> MedImage:
    """``image`` resampled linearly to the model's ``spacing`` on a grid of ``shape``
    (:func:`medseg.transforms.resampled_shape`; same origin and direction), as
    :func:`medseg.transforms.resample_to_spacing` does; the grids are axis-aligned to each
    other, so :func:`medseg.transforms.onto_grid.linear_onto` computes it in slabs, in a
    fraction of SimpleITK's time.

    With ``antialias``, each axis shrunk by a factor ``f > 1`` is first smoothed by a Gaussian
    of ``(f - 1) / 2`` input pixels (scikit-image's ``rescale`` rule), so the coarse grid
    averages the pixels it covers instead of sampling every f-th one."""
    meta = image.meta.replace(spacing=tuple(float(t) for t in spacing))
    order = "F" if fortran_spatial(image.array) else "C"
    source = image.array
    if antialias:
        sigma = [max(0.0, (float(t) / float(s) - 1.0) / 2.0)
                 for t, s in zip(spacing, image.meta.spacing, strict=True)]
        if any(v > 0 for v in sigma):
            from scipy import ndimage

            source = ndimage.gaussian_filter(np.asarray(source, np.float32), [0.0, *sigma],
                                             mode="mirror")
    array = linear_onto(source, image.meta, meta, shape, order=order, dtype=np.float32)
    if array is None:  # not reachable for a grid made this way; keep the reference anyway
        return resample_to_spacing(image, spacing, order=1)
    return MedImage(array, meta)


def _resample_back(probabilities: np.ndarray, model_meta: ImageMeta, meta: ImageMeta,
                   shape: tuple[int, ...], *, keep_probabilities: bool, order: str = "C"
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) on the input grid from probabilities on the model grid.

    The labels are the argmax of each class's linearly resampled probability. On the model
    grids this engine makes (same origin and direction as the input, other spacing) they come
    from :func:`medseg.transforms.onto_grid.argmax_onto`: the cell's label wherever the coarse
    labels around a voxel agree, interpolation only in the mixed cells, slab by slab (about one
    pass over the output); probabilities are interpolated slab by slab into float16. Any other
    pair of grids takes the SimpleITK reference, :func:`_resample_back_sitk`.
    """
    labels = argmax_onto(probabilities, model_meta, meta, shape, order=order)
    if labels is None:
        return _resample_back_sitk(probabilities, model_meta, meta, shape,
                                   keep_probabilities=keep_probabilities, order=order)
    kept = (linear_onto(probabilities, model_meta, meta, shape, order=order)
            if keep_probabilities else None)
    return labels, kept


def _resample_back_sitk(probabilities: np.ndarray, model_meta: ImageMeta, meta: ImageMeta,
                        shape: tuple[int, ...], *, keep_probabilities: bool, order: str = "C"
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference: each class's probability resampled linearly by SimpleITK
    (``resample_onto``) onto the whole input grid, with a running argmax, one class at a time
    (a few input-sized float32 volumes whatever the number of classes)."""
    k = probabilities.shape[0]
    best = np.full(shape, -1.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8 if k <= 256 else np.uint16, order=order)
    kept = np.zeros((k, *shape), dtype=np.float16) if keep_probabilities else None
    for c in range(k):
        p = resample_onto(MedImage(probabilities[c:c + 1], model_meta), meta, shape,
                          order=1).array[0]
        if k == 1:  # a single sigmoid output
            labels[p >= 0.5] = 1
        better = p > best
        labels[better & (k > 1)] = c
        np.maximum(best, p, out=best)
        if kept is not None:
            kept[c] = p
    return labels, kept
