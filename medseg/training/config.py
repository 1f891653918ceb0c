"""Typed training configuration, loaded from YAML/JSON and validated at the edge.

Every option left as ``None`` is filled from the dataset fingerprint by
:func:`medseg.training.plan.resolve_plan`; a value given here overrides the plan.
No code lives in config strings: every field is a plain number, string or list.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError

#: How a training batch picks its cases: ``"uniform"`` (every case equally often) or
#: ``"area"`` (in proportion to the case's pixels/voxels, so a large image is not seen many
#: times less per pixel than a small one).
CASE_SAMPLING = ("uniform", "area")

SOURCES = ("msd", "dicom", "folder2d", "manifest", "slices")
INSTANCE_TARGETS = ("boundary", "centre", "gap")
#: The inference method (model card ``instances.method``) of each instance target mode.
INSTANCE_METHOD = {"boundary": "boundary", "centre": "centre", "gap": "components"}


#: The ``normalization`` a config may name (``None``: from the modality).
NORMALIZATIONS = (None, "zscore", "ct", "percentile", "zscore-nonzero", "percentile-nonzero")


@dataclass
class MoreData:
    """A further dataset folder trained on in the same run as ``data.path``, in its own layout.

    Each case keeps its own channel pick and label mapping, so a folder of 3-channel TIFF
    slices (FLAIR = channel 1, masks 0/255) and a folder of one-channel NIfTI volumes
    (masks 0/1) feed the network the same input.

    Attributes:
        source: As :attr:`DataConfig.source`.
        path: Dataset root folder (or manifest file).
        channels: Channels to keep from this folder's images (``None``: ``data.channels``).
        label_values: Raw label value -> class for this folder (``None``: ``data.label_values``).
        image_dir: For ``folder2d``: the image sub-folder.
        label_dir: For ``folder2d``: the label sub-folder.
        label_suffix: For ``slices``: the mask file's suffix.
    """

    source: str
    path: str
    channels: list[int] | None = None
    label_values: dict[int, int] | None = None
    image_dir: str = "image"
    label_dir: str = "label"
    label_suffix: str = "_mask"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"data.more: source must be one of {SOURCES}, got {self.source!r}")
        if self.channels is not None:
            self.channels = [int(c) for c in self.channels]
        if self.label_values is not None:
            self.label_values = {int(k): int(v) for k, v in self.label_values.items()}


@dataclass
class DataConfig:
    """Where the data is and how to split it.

    Attributes:
        source: ``"msd"`` (dataset.json + imagesTr/labelsTr), ``"dicom"`` (one folder per case
            holding a DICOM series and a label map), ``"folder2d"`` (image/ and label/ folders of
            PNG/TIFF), ``"manifest"`` (CSV/JSON list of image/label pairs), or ``"slices"``
            (one folder per case of numbered 2D slices ``<case>_<n>.tif`` with masks
            ``<case>_<n><label_suffix>.tif``, stacked in slice order into one volume per case,
            array axes (row, column, slice), unit spacing: the LGG FLAIR layout).
        path: Dataset root folder (or the manifest file).
        image_dir: For ``folder2d``: the image sub-folder.
        label_dir: For ``folder2d``: the label sub-folder.
        label_values: Raw label value -> class index (e.g. ``{0: 1, 255: 0}`` to make ISBI's
            membrane class 1); ``None`` keeps values as they are.
        label_names: ``{class: name}``; ``None`` takes them from dataset.json or numbers them.
        modality: ``"MR"``, ``"CT"``, ``"EM"``...; ``None`` reads it from the dataset.
        val_cases: Explicit held-out case ids; else a seeded ``val_fraction`` split.
        val_fraction: Fraction of cases held out when ``val_cases`` is not given.
        max_cases: Use only the first N cases (smoke tests).
        channels: Input channels to keep from multi-channel images (``[1]``: FLAIR of the LGG
            T1/FLAIR/T1c slices; ``[0]``: one grey channel of an RGBA PNG); ``None`` keeps all.
            The model card records it so inference takes the same channels.
        instance_targets: Label maps hold instance ids 1..N; the network learns
            ``"boundary"`` (background / interior / boundary, 3 classes), ``"centre"`` (those
            and the centre of each object's interior, 4 classes) or ``"gap"``
            (background / object with a background gap between touching objects, 2 classes;
            pair with ``weight_map``). Targets are made after augmentation, from the
            augmented ids.
        group_file: CSV with one row per case (column ``image_id`` = case id) and a group
            column: the validation split takes whole groups (tiles of one field of view).
        group_column: The group column of ``group_file``.
        label_suffix: For ``"slices"``: the mask file's suffix after the slice's stem.
        more: Further dataset folders (:class:`MoreData`) trained on in the same run, each in
            its own layout, channels and label values; case ids must stay unique.
        folds: Cross-validation: split the cases (whole groups with ``group_file``) into this
            many folds by a seeded shuffle; ``fold`` is validated on, the rest trained on.
        fold: Which fold (``0 .. folds-1``) is the validation set.
        channel_rule: Turn every image into the model's channel(s) by this rule
            (``"luminance-inverted"`` for H&E images given to a fluorescence model,
            ``"rgb-auto"`` for their three colours; see
            :mod:`medseg.transforms.channels`), recorded in the model card so inference does
            the same; applied before ``channels``. ``None``: no rule.
        stream: Keep the prepared cases on disk (in the run folder) and read each patch's
            case when it is drawn, so memory does not grow with the number of cases.
    """

    source: str
    path: str
    image_dir: str = "image"
    label_dir: str = "label"
    label_values: dict[int, int] | None = None
    label_names: dict[int, str] | None = None
    modality: str | None = None
    val_cases: list[str] | None = None
    val_fraction: float = 0.2
    max_cases: int | None = None
    channels: list[int] | None = None
    instance_targets: str | None = None
    group_file: str | None = None
    group_column: str = "group"
    label_suffix: str = "_mask"
    more: list[MoreData] = field(default_factory=list)
    folds: int | None = None
    fold: int = 0
    channel_rule: str | None = None
    stream: bool = False

    def __post_init__(self) -> None:
        if self.channel_rule is not None:
            from medseg.transforms.channels import CHANNEL_RULES

            if self.channel_rule not in CHANNEL_RULES:
                raise ConfigError(f"data.channel_rule must be one of {CHANNEL_RULES}, got "
                                  f"{self.channel_rule!r}")
        self.more = [m if isinstance(m, MoreData) else _strict(MoreData, m, "data.more")
                     for m in self.more]
        if self.folds is not None and not (int(self.folds) >= 2 and 0 <= self.fold < self.folds):
            raise ConfigError(f"data.folds must be >= 2 and data.fold in 0..folds-1, got "
                              f"folds={self.folds}, fold={self.fold}")
        if self.folds is not None and self.val_cases is not None:
            raise ConfigError("give data.val_cases or data.folds, not both")
        if self.instance_targets not in (None, *INSTANCE_TARGETS):
            raise ConfigError(f"data.instance_targets must be one of {INSTANCE_TARGETS}, got "
                              f"{self.instance_targets!r}")
        if self.channels is not None:
            self.channels = [int(c) for c in self.channels]
            if not self.channels or min(self.channels) < 0:
                raise ConfigError(f"data.channels must list channel indices, got {self.channels}")
        if self.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.label_values is not None:
            self.label_values = {int(k): int(v) for k, v in self.label_values.items()}
        if self.label_names is not None:
            self.label_names = {int(k): str(v) for k, v in self.label_names.items()}


@dataclass
class AugmentConfig:
    """Batched on-the-fly augmentation (see :mod:`medseg.training.augment`).

    Attributes:
        flip_axes: Spatial axes randomly mirrored (each with probability 0.5).
        rot90: Random multiples of 90 degrees in the plane of the first two axes (2D EM).
        rotation_deg: Maximum random rotation (degrees) about each axis.
        scale: ``(min, max)`` random isotropic zoom.
        affine_prob: Probability that a sample gets the random rotation/zoom.
        elastic_prob: Probability of an elastic deformation (U-Net style, 2D EM).
        elastic_sigma: Smoothness of the displacement field (fraction of the patch size).
        elastic_magnitude: Displacement amplitude (voxels).
        gamma: ``(min, max)`` random gamma on the min-max rescaled intensities.
        intensity_scale: ``(min, max)`` random multiplicative brightness.
        noise_std: Maximum standard deviation of additive Gaussian noise.
        intensity_prob: Probability of each intensity augmentation.
        label_offset: Where the annotation sits relative to the image structures it marks, in
            voxels per spatial axis (array order): the label is the structure displaced by this
            vector. Zero for most data; ISBI 2012's membranes are drawn ~0.6 px off the dark
            pixels (``benchmarks/label_offset.py`` measures it). Mirroring or rotating image and
            label together would flip that offset and teach a blur; with it set, every spatial
            change keeps the label displaced by the same vector in the output frame.
    """

    flip_axes: list[int] = field(default_factory=list)
    rot90: bool = False
    rotation_deg: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    affine_prob: float = 0.0
    elastic_prob: float = 0.0
    elastic_sigma: float = 0.08
    elastic_magnitude: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    intensity_scale: tuple[float, float] = (1.0, 1.0)
    noise_std: float = 0.0
    intensity_prob: float = 0.15
    label_offset: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.label_offset = [float(v) for v in self.label_offset]
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.gamma = (float(self.gamma[0]), float(self.gamma[1]))
        self.intensity_scale = (float(self.intensity_scale[0]), float(self.intensity_scale[1]))
        for name in ("affine_prob", "elastic_prob", "intensity_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augment.{name} must be a probability, got {v}")


@dataclass
class TrainConfig:
    """A full training run. ``None`` means "derive from the dataset fingerprint".

    Attributes:
        name: Model name (also the file stem of the exported model).
        data: Dataset and split.
        output_dir: Run folder (checkpoints, metrics.csv, TensorBoard events, config).
        seed: Seed of every random choice (split, sampling, augmentation, weights).
        spatial_dims: 2 or 3.
        target_spacing: Training spacing (mm); cases are resampled to it once, up front.
        normalization: ``"zscore"``, ``"ct"`` or ``"percentile"`` (per image, 1st to 99.8th
            percentile mapped to 0..1; per case volume for ``"slices"`` data); ``"zscore-nonzero"``
            and ``"percentile-nonzero"`` take their statistics over the non-zero voxels only
            (the head of an MR scan, not the air around it); ``None`` picks from the modality.
        patch_size: Training/validation window.
        batch_size: Samples per iteration.
        base_filters: Features at full resolution (doubled per level up to ``max_filters``).
        max_filters: Feature cap.
        max_levels: Most resolution levels of the U-Net (fewer: faster, less context).
        upsample: Decoder up-sampling, ``"transposed"`` or ``"interp"`` (see
            :class:`medseg.networks.factory.NetworkConfig`).
        deep_supervision: Loss on lower-resolution decoder outputs too.
        foreground_prob: Probability that a patch is centred on a random foreground voxel.
        case_sampling: Which case each patch comes from: ``"uniform"`` (every case equally
            often) or ``"area"`` (in proportion to its pixels/voxels: for 2D datasets whose
            images range from 256x256 to 1040x1388, so a large image is not seen 20 times less
            per pixel than a small one).
        loss: ``"dice_ce"`` (Dice + cross-entropy, nnU-Net's default: best overlap of small
            structures) or ``"ce"`` (cross-entropy alone: calibrated probabilities, so the argmax
            minimises per-pixel error; what the U-Net paper used for ISBI 2012 membranes).
        optimizer: ``"sgd"`` (Nesterov, nnU-Net) or ``"adamw"``.
        lr: Initial learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay.
        lr_schedule: ``"poly"`` (exponent 0.9) or ``"cosine"``, over the run's progress
            (iterations or time budget, whichever ends first).
        warmup_iters: Linear warm-up iterations.
        ema_decay: Keep an exponential moving average of the weights with this decay per
            step (``0``: off). Validation, the ``best``/``last`` checkpoints and the exported
            model are the average; the raw weights travel in the resume state. The average
            starts with a shorter memory (``min(decay, (1 + t) / (10 + t))`` at step ``t``).
        epochs: Maximum epochs.
        iters_per_epoch: Iterations per epoch.
        time_budget_min: Stop after this many minutes (whole run) and keep best; ``None`` off.
        val_every: Validate every N epochs (and always at the end).
        val_overlap: Sliding-window overlap at validation.
        val_tta: Mirror test-time augmentation at validation.
        amp: ``"auto"`` (bf16 on CPUs that have it, bf16/fp16 on CUDA), ``"bf16"``,
            ``"fp16"`` or ``"off"``.
        device: ``None`` picks CUDA when present, else CPU.
        num_threads: Torch CPU threads (``None`` = torch's default).
        augment: Augmentation settings.
        weight_map: Weight the cross-entropy per pixel with the U-Net paper's map
            ``w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` (``d1``, ``d2``: distances to the
            nearest and second-nearest object; ``w_c`` balances class frequencies), computed
            from the augmented instance ids (needs ``data.instance_targets``).
        weight_map_w0: ``w0`` of the weight map.
        weight_map_sigma: ``sigma`` of the weight map, in pixels.
        fov_pixels: For a 2D model: the field of view in pixels it is trained at, recorded in
            the card so inference resamples other images to it (see
            :attr:`medseg.model_card.ModelCard.fov_pixels`).
        context_slices: For a 2D model over volumes: the ``k`` slices on either side of each
            slice it also sees, as extra channels (a "2.5D" model, :mod:`medseg.transforms.context`;
            recorded in the card, so inference feeds the same); ``0``: each slice alone.
        init_from: A model file (``.safetensors``) whose weights start the run and whose card
            fixes the plan (network, normalisation, spacing, window, classes): a fine-tune
            (see :mod:`medseg.training.finetune`). ``None``: random weights, planned from the
            data.
    """

    name: str
    data: DataConfig
    output_dir: str = "runs/train"
    seed: int = 0
    spatial_dims: int | None = None
    target_spacing: list[float] | None = None
    normalization: str | None = None
    patch_size: list[int] | None = None
    batch_size: int | None = None
    base_filters: int = 16
    max_filters: int = 256
    max_levels: int = 6
    upsample: str = "transposed"
    deep_supervision: bool = True
    foreground_prob: float = 0.33
    case_sampling: str = "uniform"
    loss: str = "dice_ce"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    lr_schedule: str = "poly"
    warmup_iters: int = 0
    ema_decay: float = 0.0
    epochs: int = 100
    iters_per_epoch: int = 100
    time_budget_min: float | None = None
    val_every: int = 5
    val_overlap: float = 0.5
    val_tta: bool = False
    amp: str = "auto"
    device: str | None = None
    num_threads: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    weight_map: bool = False
    weight_map_w0: float = 10.0
    weight_map_sigma: float = 5.0
    fov_pixels: list[int] | None = None
    context_slices: int = 0
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.weight_map and self.data.instance_targets is None:
            raise ConfigError("weight_map needs data.instance_targets (instance ids in the "
                              "labels)")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.case_sampling not in CASE_SAMPLING:
            raise ConfigError(f"case_sampling must be one of {CASE_SAMPLING}, got "
                              f"{self.case_sampling!r}")
        if self.loss not in ("dice_ce", "ce"):
            raise ConfigError(f"loss must be 'dice_ce' or 'ce', got {self.loss!r}")
        if self.lr_schedule not in ("poly", "cosine"):
            raise ConfigError(f"lr_schedule must be 'poly' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.spatial_dims not in (None, 2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {NORMALIZATIONS[1:]}, got "
                              f"{self.normalization!r}")
        for name in ("epochs", "iters_per_epoch", "val_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.context_slices, bool) or not isinstance(self.context_slices, int) \
                or self.context_slices < 0:
            raise ConfigError(f"context_slices must be an integer >= 0, got "
                              f"{self.context_slices!r}")
        if self.context_slices and self.spatial_dims == 3:
            raise ConfigError("context_slices is for 2D models over volumes (spatial_dims: 2)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("label_values", "label_names"):
            if d["data"][key] is not None:
                d["data"][key] = {str(k): v for k, v in d["data"][key].items()}
        for more in d["data"]["more"]:
            if more["label_values"] is not None:
                more["label_values"] = {str(k): v for k, v in more["label_values"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build and validate from plain data, rejecting unknown keys (typos)."""
        d = dict(d)
        try:
            data = _strict(DataConfig, d.pop("data"), f"{source}: data")
            augment = _strict(AugmentConfig, d.pop("augment", None) or {}, f"{source}: augment")
        except KeyError as exc:
            raise ConfigError(f"{source}: missing section {exc}") from exc
        return _strict(cls, {**d, "data": data, "augment": augment}, source)


def _strict(kind: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}")
    try:
        return kind(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML or JSON training config (relative paths resolve against the working directory).

    Args:
        path: Config file.
        overrides: Dotted keys to replace, e.g. ``{"data.max_cases": 10}``.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return TrainConfig.from_dict(raw, source=str(path))


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as JSON (atomically)."""
    from medseg.io.atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(config.to_dict(), indent=2, sort_keys=True))
