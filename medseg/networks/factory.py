"""Build MONAI's DynUNet (one class for 2D and 3D) from a typed, JSON-serialisable config."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a network is built, not to read a config
    import torch

#: Bounds on a network's size (a card asking for more is damaged or hostile: the largest
#: networks medseg builds use 320 filters per level and a few dozen classes).
MAX_FILTERS = 4096
MAX_CHANNELS = 1024
UPSAMPLES = ("transposed", "interp")


def _check_ints(name: str, values: list[Any], low: int, high: int) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not low <= v <= high:
            raise ConfigError(f"{name} must be integers in [{low}, {high}], got {values!r}")


@dataclass
class NetworkConfig:
    """A U-Net described by plain data, so a model card can rebuild it without code.

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: Input channels (image modalities).
        out_channels: Output classes, background included.
        filters: Feature maps per resolution level.
        kernel_size: Convolution kernel per level.
        strides: Down-sampling stride per level (the first is 1).
        norm: ``"instance"`` or ``"batch"``.
        deep_supervision: Extra outputs at lower resolutions during training.
        deep_supr_num: Number of extra deep-supervision heads.
        res_block: Residual blocks instead of plain double convolutions.
        upsample: How the decoder goes up a level: ``"transposed"`` (a learned transposed
            convolution with kernel = stride, MONAI's DynUNet default) or ``"interp"`` (a 1x1
            convolution at the coarse level followed by bilinear/trilinear interpolation:
            no checkerboard pattern, fewer weights; the same as interpolating first and then
            convolving, since both are linear and the interpolation weights sum to 1).
    """

    spatial_dims: int
    in_channels: int
    out_channels: int
    filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    kernel_size: list[list[int]] = field(default_factory=list)
    strides: list[list[int]] = field(default_factory=list)
    norm: str = "instance"
    deep_supervision: bool = False
    deep_supr_num: int = 1
    res_block: bool = False
    architecture: str = "dynunet"
    upsample: str = "transposed"

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.architecture != "dynunet":
            raise ConfigError(f"unknown architecture {self.architecture!r} (supported: 'dynunet')")
        n = len(self.filters)
        if not self.kernel_size:
            self.kernel_size = [[3] * self.spatial_dims for _ in range(n)]
        if not self.strides:
            ones, twos = [1] * self.spatial_dims, [2] * self.spatial_dims
            self.strides = [ones] + [list(twos) for _ in range(n - 1)]
        if len(self.kernel_size) != n or len(self.strides) != n:
            raise ConfigError("filters, kernel_size and strides must have one entry per level")
        if self.upsample not in UPSAMPLES:
            raise ConfigError(f"upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        if self.norm not in ("instance", "batch"):
            raise ConfigError(f"norm must be 'instance' or 'batch', got {self.norm!r}")
        _check_ints("in_channels", [self.in_channels], 1, MAX_CHANNELS)
        _check_ints("out_channels", [self.out_channels], 1, MAX_CHANNELS)
        _check_ints("filters", self.filters, 1, MAX_FILTERS)
        for k, s in zip(self.kernel_size, self.strides, strict=True):
            if len(k) != self.spatial_dims or len(s) != self.spatial_dims:
                raise ConfigError(f"kernel_size and strides need {self.spatial_dims} values per "
                                  f"level, got {k} and {s}")
            _check_ints("kernel_size", k, 1, 15)
            _check_ints("strides", s, 1, 8)
        _check_ints("deep_supr_num", [self.deep_supr_num], 1, max(1, n - 1))

    @property
    def divisor(self) -> list[int]:
        """Each spatial size fed to the network must be a multiple of this (product of strides)."""
        div = [1] * self.spatial_dims
        for s in self.strides:
            div = [d * int(v) for d, v in zip(div, s, strict=True)]
        return div

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown network options: {sorted(unknown)}")
        return cls(**d)


def plan_network(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    patch_size: list[int],
    spacing: list[float] | None = None,
    base_filters: int = 16,
    max_filters: int = 256,
    min_feature_size: int = 4,
    deep_supervision: bool = False,
    max_levels: int = 6,
    upsample: str = "transposed",
) -> NetworkConfig:
    """Plan levels, strides and kernels from the patch size and spacing (nnU-Net's heuristic).

    An axis is down-sampled while its feature map stays >= ``min_feature_size`` voxels and its
    spacing is not more than twice the finest spacing (anisotropic data keeps its coarse axis
    longer at full resolution, and gets 1-wide kernels there at the first levels). At most
    ``max_levels`` resolution levels (a shallower network is faster and sees less context).
    """
    if max_levels < 2:
        raise ConfigError(f"max_levels must be >= 2, got {max_levels}")
    sizes = [int(p) for p in patch_size]
    sp = [float(s) for s in (spacing or [1.0] * spatial_dims)]
    strides: list[list[int]] = [[1] * spatial_dims]
    kernels: list[list[int]] = [[3 if s <= 2 * min(sp) else 1 for s in sp]]
    while True:
        finest = min(sp)
        stride = [
            2 if (size // 2 >= min_feature_size and s <= 2 * finest) else 1
            for size, s in zip(sizes, sp, strict=True)
        ]
        if all(v == 1 for v in stride) or len(strides) >= max_levels:
            break
        sizes = [size // v for size, v in zip(sizes, stride, strict=True)]
        sp = [s * v for s, v in zip(sp, stride, strict=True)]
        strides.append(stride)
        kernels.append([3 if s <= 2 * min(sp) else 1 for s in sp])
    filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
    return NetworkConfig(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        filters=filters,
        kernel_size=kernels,
        strides=strides,
        deep_supervision=deep_supervision,
        deep_supr_num=max(1, min(2, len(strides) - 2)),
        upsample=upsample,
    )


def build_network(config: NetworkConfig) -> torch.nn.Module:
    """Instantiate MONAI's DynUNet from ``config``.

    The module maps ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``;
    in training mode with deep supervision it returns ``(B, 1 + deep_supr_num, out_channels,
    *spatial)`` instead (MONAI's convention).
    """
    from monai.networks.nets import DynUNet

    from medseg.networks.blocks import InterpUp

    norm = ("INSTANCE", {"affine": True}) if config.norm == "instance" else "BATCH"
    net = DynUNet(
        spatial_dims=config.spatial_dims,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        kernel_size=config.kernel_size,
        strides=config.strides,
        upsample_kernel_size=config.strides[1:],
        filters=config.filters,
        norm_name=norm,
        deep_supervision=config.deep_supervision,
        deep_supr_num=config.deep_supr_num,
        res_block=config.res_block,
    )
    if config.upsample == "interp":
        for block, stride in zip(net.upsamples, config.strides[1:][::-1], strict=True):
            conv = block.transp_conv.conv
            block.transp_conv = InterpUp(config.spatial_dims, conv.in_channels,
                                         conv.out_channels, stride)
    return net

