"""Network blocks medseg adds to MONAI's DynUNet."""

from __future__ import annotations

import torch


class InterpUp(torch.nn.Module):
    """A decoder's step up one level without a transposed convolution: a 1x1 convolution
    (channel mixing, at the coarse resolution where it is cheapest) and then linear
    interpolation by ``stride`` (no overlapping kernels, hence no checkerboard)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 stride: list[int]) -> None:
        super().__init__()
        conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
        self.conv = conv(in_channels, out_channels, kernel_size=1, bias=False)
        self.scale = tuple(float(v) for v in stride)
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.conv(x), scale_factor=self.scale,
                                               mode=self.mode, align_corners=False)
