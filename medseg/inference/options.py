"""One typed set of inference settings, built once at the edge and carried whole.

The CLI (``medseg-predict``), the Python API (:class:`~medseg.inference.engine.Segmenter`,
:func:`~medseg.inference.batch.run_batch`), the Ray runner and the napari plugin all build an
:class:`InferenceOptions` and hand the same object on; every record keeps it
(``provenance.inference_options``), and a resumed batch compares it with the record's.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

from medseg.errors import ConfigError
from medseg.inference.postprocess import PostprocessConfig

BLENDS = ("gaussian", "constant")
#: The compute guard's default limit: a case is refused when its sliding windows on the model
#: grid number more than this many times those of the largest image the model was trained on
#: (:mod:`medseg.inference.guard`). Two orders of magnitude: every shipped model's validation
#: cases are at most 1x (``benchmarks/results/compute_guard.txt``); for the crop-trained
#: hippocampus model a whole-head MR series (0.69 x 0.69 x 6.5 mm) is 70x and runs, a 1024^3
#: volume at 1 mm is 12,000x and is refused.
DEFAULT_MAX_WORK = 100.0
#: Environment variable that sets the default limit (``InferenceOptions.max_work``).
MAX_WORK_ENV = "MEDSEG_MAX_WORK"


def default_max_work() -> float:
    """:data:`MAX_WORK_ENV` if set, else :data:`DEFAULT_MAX_WORK`.

    Raises:
        ConfigError: The variable is not a positive number.
    """
    text = os.environ.get(MAX_WORK_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_WORK
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{MAX_WORK_ENV} must be a positive number (a factor over the "
                          f"largest training image's work), got {text!r}")
    return value


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a model.

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None``: CUDA if available, else CPU.
        overlap: Sliding-window overlap in ``[0, 1)``.
        tta: Mirror test-time augmentation (logits averaged per window).
        amp: Mixed precision; ``None``: on for CUDA (float16) and for CPUs with native bf16.
        sw_batch_size: Windows per forward pass.
        margin: Reflected context per side in voxels; ``None``: the engine's default.
        blend: ``"gaussian"`` or ``"constant"`` window weighting.
        keep_largest: Keep only the largest connected component of each label.
        min_size_ml: Remove components smaller than this (mL; mm^2 / 1000 in 2D).
        fill_holes: Label the background each label encloses (a cyst or cavity inside a
            lesion): in each slice for a 2D model, in the volume for a 3D one.
        channels_last: Channels-last convolutions; ``None``: on for CPU.
        low_memory: Smaller peak memory, slower forward passes (:mod:`medseg.inference.heap`).
        whole_image: 2D models: run an image (or each slice of a volume) whole, in one forward
            pass with reflected context around it, instead of in overlapping windows.
            ``None``: whenever the padded image has at most ``2**21`` pixels (about 1448 x
            1448), which bounds the activations to a few hundred MB; larger images go through
            the sliding window. ``False``: always windows; ``True``: always whole.
        strict: A batch fails a case whose image does not fit the model's training domain
            (any fit-report warning, :mod:`medseg.inference.fit`) instead of only warning.
        object_diameter: Instance models trained in pixels (``nuclei``): the typical
            diameter of the objects in the input, in its pixels (Cellpose's "diameter").
            The image is zoomed by the model's training diameter (``domain.object_diameter``)
            over this, at most 2x either way, and the objects come back on the input's
            pixels. ``"auto"``: estimated for each image from the model's own result at
            native pixels (:mod:`medseg.inference.diameter`), then zoomed by it.
            ``None``: the card's default (``instances.object_diameter``, ``"auto"`` for
            models fine-tuned at one object scale), else native pixels.
        max_work: The compute guard's limit (:mod:`medseg.inference.guard`): a case whose
            sliding windows on the model grid number more than this many times those of the
            largest image the model was trained on is refused before the network runs, with
            the estimate and the ways out. Default: ``MEDSEG_MAX_WORK`` or
            :data:`DEFAULT_MAX_WORK` (100). Models whose card records no training domain are
            never refused.
        force: Run a case the compute guard would refuse (the estimate is still recorded).
    """

    device: str | None = None
    overlap: float = 0.5
    tta: bool = False
    amp: bool | None = None
    sw_batch_size: int = 1
    margin: int | tuple[int, ...] | None = None
    blend: str = "gaussian"
    keep_largest: bool = False
    min_size_ml: float = 0.0
    fill_holes: bool = False
    channels_last: bool | None = None
    low_memory: bool = False
    whole_image: bool | None = None
    strict: bool = False
    object_diameter: float | str | None = None
    max_work: float = field(default_factory=default_max_work)
    force: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.overlap, (int, float)) and 0 <= self.overlap < 1):
            raise ConfigError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size must be a positive integer, got "
                              f"{self.sw_batch_size!r}")
        if self.blend not in BLENDS:
            raise ConfigError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if not (math.isfinite(self.min_size_ml) and self.min_size_ml >= 0):
            raise ConfigError(f"min_size_ml must be >= 0, got {self.min_size_ml!r}")
        if self.object_diameter is not None and self.object_diameter != "auto":
            d = self.object_diameter
            if isinstance(d, bool) or not isinstance(d, numbers.Real) \
                    or not (math.isfinite(d) and d > 0):
                raise ConfigError(f"object_diameter must be 'auto' or a positive number of "
                                  f"pixels, got "
                                  f"{d!r}")
            object.__setattr__(self, "object_diameter", float(d))  # numpy scalars too
        w = self.max_work
        if isinstance(w, bool) or not isinstance(w, numbers.Real) \
                or not (math.isfinite(w) and w > 0):
            raise ConfigError(f"max_work must be a positive number (a factor over the largest "
                              f"training image's work), got {w!r}")
        object.__setattr__(self, "max_work", float(w))
        if isinstance(self.margin, list):
            object.__setattr__(self, "margin", tuple(self.margin))

    @property
    def postprocess(self) -> PostprocessConfig:
        return PostprocessConfig(keep_largest=self.keep_largest, min_size_ml=self.min_size_ml,
                                 fill_holes=self.fill_holes)

    def replace(self, **changes: Any) -> InferenceOptions:
        """A copy with ``changes`` (unknown names raise ``ConfigError``)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown inference options: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["margin"], tuple):
            d["margin"] = list(d["margin"])
        return d


def merge_options(options: InferenceOptions | None, **legacy: Any) -> InferenceOptions:
    """``options`` (or the defaults) with the keyword settings given one by one; a
    ``postprocess=PostprocessConfig`` keyword becomes ``keep_largest`` / ``min_size_ml`` /
    ``fill_holes``."""
    base = options or InferenceOptions()
    post = legacy.pop("postprocess", None)
    if post is not None:
        legacy.update(keep_largest=post.keep_largest, min_size_ml=post.min_size_ml,
                      fill_holes=post.fill_holes)
    if "device" in legacy and legacy["device"] is not None:
        legacy["device"] = str(legacy["device"])
    return base.replace(**legacy) if legacy else base
