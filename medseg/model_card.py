"""Model cards and model files.

A medseg model is **one ``.safetensors`` file**: the network weights (no pickled code, so loading
never executes anything) plus the model card as JSON in the file's metadata. The card says
everything needed to apply the model correctly: network config, label names, target spacing,
intensity normalisation, patch size, and how it was trained (data, split, metrics, machine,
versions). Training-resume state (optimiser, scheduler) lives in a separate file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError, ModelError, describe_exception
from medseg.networks.factory import NetworkConfig, build_network

if TYPE_CHECKING:  # reading a card needs no torch (the napari widgets read cards on the GUI
    import torch  # thread); building and loading a network imports it

CARD_METADATA_KEY = "medseg.model_card"
CARD_FORMAT_VERSION = 1
#: The classes (background included) each instance method reads: how an instance model's
#: classes become objects (:mod:`medseg.inference.instances`), what its training targets are
#: (:mod:`medseg.training.instances`).
INSTANCE_CLASSES = {"boundary": {0: "background", 1: "interior", 2: "boundary"},
                    "centre": {0: "background", 1: "interior", 2: "boundary", 3: "centre"},
                    "components": {0: "background", 1: "object"}}
INSTANCE_METHODS = tuple(INSTANCE_CLASSES)
#: Largest window side a card may ask for (a damaged card asking for 10^5 fails at load).
MAX_ROI = 4096


@dataclass
class NormalizationConfig:
    """Intensity normalisation applied before the network, identical in training and inference.

    Attributes:
        scheme: ``"zscore"`` (per image, MR/microscopy), ``"ct"`` (clip to ``clip`` then
            z-score with the dataset's foreground ``mean``/``std``), ``"scale"`` (divide by
            ``std`` after subtracting ``mean``, fixed for e.g. uint8 EM) or ``"none"``.
        clip: ``(low, high)`` intensity clip, for ``"ct"``.
        mean: Dataset mean, for ``"ct"`` and ``"scale"``.
        std: Dataset standard deviation, for ``"ct"`` and ``"scale"``.
        nonzero: For ``"zscore"``, compute statistics over non-zero voxels only.
        percentiles: For ``"percentile"`` (per image): the low and high percentiles mapped to
            0 and 1 (robust to the intensity scale: an 8-bit and a 12-bit image of the same
            anatomy, or a dim and a bright microscopy field, land on the same range).
    """

    scheme: str = "zscore"
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    nonzero: bool = False
    percentiles: tuple[float, float] = (1.0, 99.8)

    def __post_init__(self) -> None:
        self.percentiles = (float(self.percentiles[0]), float(self.percentiles[1]))
        if not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise ModelError(f"percentiles must satisfy 0 <= low < high <= 100, got "
                             f"{self.percentiles}")
        if self.scheme not in ("zscore", "ct", "scale", "percentile", "none"):
            raise ModelError(f"unknown normalisation scheme {self.scheme!r}")
        if self.scheme in ("ct", "scale") and (self.mean is None or not self.std):
            raise ModelError(f"normalisation {self.scheme!r} needs mean and a non-zero std")
        if self.clip is not None:
            self.clip = (float(self.clip[0]), float(self.clip[1]))


@dataclass
class ModelCard:
    """Everything needed to apply a model, and the record of how it was made.

    Attributes:
        name: Short name (``"hippocampus"``).
        network: Rebuilds the network.
        label_names: ``{class index: name}``, background (0) included.
        target_spacing: Spacing (array axis order; mm, or px when ``domain["unit"]`` is px)
            the model works at; ``None`` = native. A model trained in px (DSB2018 PNGs, ISBI
            2012) runs an image that has a pixel size (um TIFF) on its native pixels.
        roi_size: Sliding-window patch size (a multiple of the network's divisor).
        normalization: Intensity normalisation.
        modality: Expected input modality (``"MR"``, ``"CT"``, ``"EM"``...).
        description: Free text for users.
        label_colors: ``{class index: (r, g, b)}`` in 0..255 for overlays and DICOM SEG.
        training: How it was trained (dataset, split, config, metrics, history, time, machine).
        fingerprint: Dataset fingerprint the plan was derived from.
        versions: Library versions at training time.
        input_channels: Channels the model takes from an input that has more than
            :attr:`image_channels` (e.g. ``[1]``: FLAIR of an LGG T1/FLAIR/T1c TIFF; ``[0]``:
            one grey channel of an RGBA microscopy PNG whose colour channels are equal);
            ``None``: the input must have exactly :attr:`image_channels`.
        fov_pixels: For 2D models: every image (or slice of a volume) is resampled so that its
            whole field of view spans this many pixels per axis, as the training images were
            (LGG slices: a 220-240 mm head over 256 x 256); ``None`` runs on native pixels.
        instances: How objects are separated into instances after the class map, for instance
            models: ``{"method": "boundary"}`` (classes background / interior / boundary;
            seeds are connected interiors grown over the foreground by a watershed),
            ``{"method": "centre"}`` (those classes and a fourth, centre: the centres seed the
            watershed) or ``{"method": "components"}`` (connected components of the
            foreground, grown back over the gaps the model draws between touching objects);
            ``None``: semantic only.
        postprocess: The clean-up a run applies when it asks for none itself
            (``{"min_size_ml": float, "keep_largest": bool, "fill_holes": bool}``, see
            :class:`medseg.inference.postprocess.PostprocessConfig`, and the decision
            ``threshold``); ``None``: none.
        label_offset: Voxels (array axes) by which the model draws labels off the image
            structures, as trained with ``augment.label_offset``; empty when none. Mirror TTA
            moves each flipped-back prediction by twice it
            (:func:`medseg.inference.engine.unmirror`). Older cards kept it only in the
            training record; it is read from there.
        domain: What the model was trained on, measured on the training cases (modality, field
            of view, spacing, normalised intensities, label sizes, synthetic or real data,
            intended use; see :func:`medseg.training.domain.compute_domain`); every
            prediction's fit report checks the input against it (:mod:`medseg.inference.fit`).
            ``None``: unknown, nothing is checked.
        confidence: How a result's confidence score (:mod:`medseg.inference.confidence`) is
            judged: ``{"threshold": float}`` (a result scoring below it is flagged "low
            confidence", with what it was chosen on and how well it separates poor results);
            with it the engine always computes the score. ``None``: no threshold (the score is
            still computed whenever probabilities are).
        channel_rule: How an input becomes the model's channel(s) (``"luminance-inverted"``:
            the negative of a colour image's luminance; ``"rgb-auto"``: three colour channels;
            see :mod:`medseg.transforms.channels`),
            applied in training and at inference alike, before ``input_channels``;
            ``None``: no rule.
        context_slices: For a 2D model over volumes: how many neighbouring slices on either
            side of each slice it also sees, as extra channels (a "2.5D" model; see
            :mod:`medseg.transforms.context`); the network takes ``2k + 1`` times the image's
            channels. ``0``: each slice alone.
    """

    name: str
    network: NetworkConfig
    label_names: dict[int, str]
    roi_size: list[int]
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    target_spacing: list[float] | None = None
    modality: str = ""
    description: str = ""
    label_colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    input_channels: list[int] | None = None
    fov_pixels: list[int] | None = None
    instances: dict[str, Any] | None = None
    postprocess: dict[str, Any] | None = None
    label_offset: list[float] = field(default_factory=list)
    domain: dict[str, Any] | None = None
    confidence: dict[str, Any] | None = None
    channel_rule: str | None = None
    context_slices: int = 0
    format_version: int = CARD_FORMAT_VERSION

    def _check_instances(self) -> None:
        """Types and ranges of the instance settings (a bad card fails when loaded)."""
        spec = self.instances or {}
        seeds = spec.get("seeds", "interior")
        if seeds not in ("interior", "distance"):
            raise ModelError(f"model card {self.name!r}: instances.seeds must be 'interior' or "
                             f"'distance', got {seeds!r}")
        method = spec.get("method", "boundary")
        if method == "components" and "max_grow" in spec:
            raise ModelError(f"model card {self.name!r}: instances.max_grow applies to the "
                             "'boundary' and 'centre' methods only")
        if self.instances is not None and method in INSTANCE_CLASSES \
                and len(self.label_names) != len(INSTANCE_CLASSES[method]):
            raise ModelError(f"model card {self.name!r}: instances.method {method!r} reads "
                             f"{len(INSTANCE_CLASSES[method])} classes, the card has "
                             f"{len(self.label_names)} ({sorted(self.label_names)})")
        if method == "centre" and any(k in spec for k in ("seeds", "h", "sigma")):
            raise ModelError(f"model card {self.name!r}: the 'centre' method is seeded by its "
                             "centres: instances.seeds, h and sigma apply to 'boundary' only")
        if spec.get("object_diameter", "auto") != "auto":
            raise ModelError(f"model card {self.name!r}: instances.object_diameter can only be "
                             f"'auto' (estimate each image's from a first pass), got "
                             f"{spec['object_diameter']!r}")
        ranges = {"seed_threshold": (0.0, 1.0), "foreground_threshold": (0.0, 1.0),
                  "centre_threshold": (0.0, 1.0),
                  "h": (0.0, 1e3), "sigma": (0.0, 1e2), "min_size": (0.0, 1e9),
                  "max_grow": (0.0, 1e3), "min_score": (0.0, 1.0)}
        for key, (lo, hi) in ranges.items():
            value = spec.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (math.isfinite(value) and lo <= value <= hi):
                raise ModelError(f"model card {self.name!r}: instances.{key} must be a number "
                                 f"in [{lo:g}, {hi:g}], got {value!r}")

    def __post_init__(self) -> None:
        method = (self.instances or {}).get("method", "boundary")
        if self.instances is not None and method not in INSTANCE_METHODS:
            raise ModelError(f"model card {self.name!r}: instances.method must be one of "
                             f"{INSTANCE_METHODS}, got {method!r}")
        self._check_instances()
        self._check_geometry()
        offset = [float(v) for v in self.label_offset]
        if offset and (len(offset) != self.network.spatial_dims
                       or not all(math.isfinite(v) and abs(v) < 16 for v in offset)):
            raise ModelError(f"model card {self.name!r}: label_offset must be "
                             f"{self.network.spatial_dims} finite voxel offsets, got "
                             f"{self.label_offset!r}")
        self.label_offset = offset
        k = self.context_slices
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0 \
                or (k and (self.network.spatial_dims != 2
                           or self.network.in_channels % (2 * k + 1))):
            raise ModelError(f"model card {self.name!r}: context_slices must be a non-negative "
                             "integer, for a 2D network whose input channels it divides into "
                             f"2k + 1 slices, got {k!r} ({self.network.spatial_dims}D network, "
                             f"{self.network.in_channels} input channels)")
        if self.channel_rule is not None:
            from medseg.transforms.channels import CHANNEL_RULES, rule_channels

            if self.channel_rule not in CHANNEL_RULES \
                    or self.image_channels != rule_channels(self.channel_rule):
                raise ModelError(f"model card {self.name!r}: channel_rule must be one of "
                                 f"{CHANNEL_RULES} that makes the network's "
                                 f"{self.image_channels} input channel(s), got "
                                 f"{self.channel_rule!r}")
        for name in ("input_channels", "fov_pixels"):
            value = getattr(self, name)
            if value is not None and (not value or any(int(v) < 0 for v in value)):
                raise ModelError(f"model card {self.name!r}: {name} must list non-negative "
                                 f"integers, got {value!r}")

    def _check_geometry(self) -> None:
        """roi_size, target_spacing and labels in range: a damaged card fails at load, with
        its name, not case after case with an unexpected error."""
        dims = self.network.spatial_dims
        roi = list(self.roi_size)
        if len(roi) != dims or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                                   or not 1 <= v <= MAX_ROI for v in roi):
            raise ModelError(f"model card {self.name!r}: roi_size must be {dims} integers in "
                             f"[1, {MAX_ROI}], got {roi!r}")
        if self.target_spacing is not None:
            spacing = list(self.target_spacing)
            if len(spacing) != dims or not all(
                    isinstance(v, numbers.Real) and math.isfinite(v) and v > 0 for v in spacing):
                raise ModelError(f"model card {self.name!r}: target_spacing must be {dims} "
                                 f"finite positive numbers (mm), got {spacing!r}")
        highest = max(self.network.out_channels - 1, 1)  # a sigmoid output labels 0 and 1
        if any(not 0 <= k <= highest for k in self.label_names):
            raise ModelError(f"model card {self.name!r}: label values {sorted(self.label_names)} "
                             f"do not fit {self.network.out_channels} output channel(s)")

    @property
    def image_channels(self) -> int:
        """Channels the model takes from the image (the network's input holds them for each
        of the ``2 * context_slices + 1`` slices it sees)."""
        return self.network.in_channels // (2 * self.context_slices + 1)

    @property
    def spatial_dims(self) -> int:
        return self.network.spatial_dims

    @property
    def object_diameter_px(self) -> float | None:
        """The median diameter in pixels of the objects an instance model trained on images
        without a pixel size learned (``domain.object_diameter``), which
        ``InferenceOptions.object_diameter`` zooms an input to; ``None`` for any other model."""
        domain = self.domain or {}
        trained = domain.get("object_diameter")
        return float(trained) if trained and domain.get("unit") == "px" else None

    @property
    def num_classes(self) -> int:
        return self.network.out_channels

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["label_names"] = {str(k): v for k, v in self.label_names.items()}
        d["label_colors"] = {str(k): list(v) for k, v in self.label_colors.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        try:
            d = dict(d)
            version = int(d.get("format_version", CARD_FORMAT_VERSION))
            if version > CARD_FORMAT_VERSION:
                raise ModelError(
                    f"model card format {version} is newer than this medseg understands "
                    f"({CARD_FORMAT_VERSION}); upgrade medseg"
                )
            d["network"] = NetworkConfig.from_dict(d["network"])
            norm = dict(d.get("normalization") or {})
            if norm.get("clip") is not None:
                norm["clip"] = tuple(norm["clip"])
            if norm.get("percentiles") is not None:
                norm["percentiles"] = tuple(norm["percentiles"])
            d["normalization"] = NormalizationConfig(**norm)
            d["label_names"] = {int(k): str(v) for k, v in d["label_names"].items()}
            d["label_colors"] = {
                int(k): tuple(int(c) for c in v) for k, v in (d.get("label_colors") or {}).items()
            }
            if "label_offset" not in d:  # cards before format 1.1 kept it in the training record
                augment = ((d.get("training") or {}).get("config") or {}).get("augment") or {}
                d["label_offset"] = list(augment.get("label_offset") or [])
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in known})
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise ModelError(f"invalid model card: {describe_exception(exc)}") from exc

    def hash(self) -> str:
        """SHA-256 of the canonical card JSON (identifies preprocessing + labels + training)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def output_labels(self) -> str:
        """What the model's label files hold, in words: one id per object for an instance model
        (not its network classes), else each class id and name."""
        if self.instances:
            return "objects 1..N (one id per object), 0 background"
        return ", ".join(f"{k} {v}" for k, v in sorted(self.label_names.items()))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's behaviour, for provenance records."""
    import monai
    import numpy
    import torch

    import medseg

    return {
        "medseg": medseg.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def save_model(path: str | Path, model: torch.nn.Module, card: ModelCard) -> Path:
    """Write weights + card to a ``.safetensors`` file, atomically (temp file then rename)."""
    from safetensors.torch import save_model as save_safetensors_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # DynUNet registers some modules twice (skip_layers alias downsamples/upsamples), and
    # safetensors' save_file refuses shared tensors; its save_model/load_model drop and restore
    # the aliases.
    save_safetensors_model(_unwrap(model), str(tmp), metadata={CARD_METADATA_KEY: card.to_json()})
    tmp.replace(path)
    return path


def read_model_card(path: str | Path) -> ModelCard:
    """Read only the card of a model file (cheap: no weights are loaded)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise ModelError(f"{path}: not a readable .safetensors model file ({exc})") from exc
    if CARD_METADATA_KEY not in meta:
        raise ModelError(f"{path}: no medseg model card in the file's metadata")
    try:
        card = json.loads(meta[CARD_METADATA_KEY])
    except ValueError as exc:
        raise ModelError(f"{path}: the model card is not valid JSON ({exc})") from exc
    if not isinstance(card, dict):
        raise ModelError(f"{path}: the model card is not a JSON object")
    return ModelCard.from_dict(card)


def load_model(
    path: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, ModelCard]:
    """Load a model file: rebuild the network from its card, load weights, set eval mode."""
    import torch
    from safetensors.torch import load_model as load_safetensors_model

    card = read_model_card(path)
    net = build_network(card.network)
    try:
        load_safetensors_model(net, str(path), strict=True, device="cpu")
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path}: weights do not match the card's network: "
                         f"{first[:300]}") from exc
    bad = [name for name, t in (*net.named_parameters(), *net.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                         f"(first: {bad[0]}); the file is damaged")
    return net.to(device).eval(), card


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP / torch.compile wrappers."""
    import torch

    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, torch.nn.Module):
            return model
        model = inner
