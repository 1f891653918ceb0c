"""Network planning and the decoder's up-sampling choice."""

import dataclasses

import pytest
import torch

from medseg.errors import ConfigError
from medseg.model_card import ModelCard, NormalizationConfig, load_model, save_model
from medseg.networks import NetworkConfig, build_network, plan_network
from medseg.networks.blocks import InterpUp


def test_max_levels_caps_the_depth() -> None:
    deep = plan_network(spatial_dims=2, in_channels=1, out_channels=2, patch_size=[256, 256])
    shallow = plan_network(spatial_dims=2, in_channels=1, out_channels=2, patch_size=[256, 256],
                           base_filters=8, max_filters=64, max_levels=5)
    assert len(deep.filters) == 6 and deep.divisor == [32, 32]
    assert shallow.filters == [8, 16, 32, 64, 64] and shallow.divisor == [16, 16]
    with pytest.raises(ConfigError, match="max_levels"):
        plan_network(spatial_dims=2, in_channels=1, out_channels=2, patch_size=[64, 64],
                     max_levels=1)


@pytest.mark.parametrize("dims", [2, 3])
def test_interp_decoder_has_no_transposed_convolution_and_round_trips(tmp_path, dims) -> None:
    config = plan_network(spatial_dims=dims, in_channels=1, out_channels=3,
                          patch_size=[32] * dims, base_filters=4, max_filters=16,
                          upsample="interp")
    torch.manual_seed(0)
    net = build_network(config).eval()
    kinds = {type(m) for m in net.modules()}
    assert InterpUp in kinds
    assert not kinds & {torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d}
    transposed = build_network(dataclasses.replace(config, upsample="transposed")).eval()
    x = torch.randn(2, 1, *[32] * dims)
    with torch.no_grad():
        assert net(x).shape == transposed(x).shape == (2, 3, *[32] * dims)
    assert sum(p.numel() for p in net.parameters()) < sum(
        p.numel() for p in transposed.parameters())  # 1x1 instead of 2^d-tap kernels
    card = ModelCard(name="interp", network=config, label_names={0: "bg", 1: "a", 2: "b"},
                     roi_size=[32] * dims, normalization=NormalizationConfig(scheme="zscore"))
    loaded, card2 = load_model(save_model(tmp_path / "m.safetensors", net, card))
    assert card2.network.upsample == "interp"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_interp_up_is_interpolating_after_a_1x1_convolution() -> None:
    """Convolving 1x1 then interpolating equals interpolating then convolving (both linear,
    interpolation weights sum to 1): the cheap order computes the textbook block."""
    torch.manual_seed(0)
    up = InterpUp(2, 6, 4, [2, 2])
    x = torch.randn(1, 6, 5, 7)
    textbook = up.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear",
                                                       align_corners=False))
    torch.testing.assert_close(up(x), textbook, atol=1e-5, rtol=1e-5)


def test_unknown_upsample_is_refused() -> None:
    with pytest.raises(ConfigError, match="upsample"):
        NetworkConfig(spatial_dims=2, in_channels=1, out_channels=2, upsample="pixelshuffle")
