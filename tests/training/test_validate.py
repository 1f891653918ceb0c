"""Validation's mirror TTA undoes a declared label offset, as the inference engine does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.training.validate import predict_case_logits


def shifted_net() -> torch.nn.Module:
    """Logits that mark voxel ``p`` where the input is high at ``p - 1`` along the first axis:
    labels drawn one voxel off the structures (+1), as the ISBI annotation is."""
    conv = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 0, 0, 1] = 5.0   # out(i, j) = 5 * x(i - 1, j)
        conv.weight[0, 0, 0, 1] = -5.0
    return conv.eval()


def test_validation_tta_moves_mirrored_predictions_back_by_the_label_offset() -> None:
    net = shifted_net()
    image = torch.from_numpy(np.random.default_rng(5).normal(size=(1, 20, 24)).astype("f4"))
    kwargs = dict(roi_size=[8, 8], overlap=0.5, device=torch.device("cpu"), amp_dtype=None)
    with torch.no_grad():
        plain = predict_case_logits(net, image, **kwargs).softmax(0)
        corrected = predict_case_logits(net, image, tta=True, label_offset=[1.0, 0.0],
                                        **kwargs).softmax(0)  # mean logits, as the engine
        ignored = predict_case_logits(net, image, tta=True, **kwargs).softmax(0)
    inner = (slice(None), slice(3, -3), slice(3, -3))  # away from the mirrored borders
    # corrected: every mirroring agrees with the unmirrored prediction (up to the zero padding
    # at window edges, which mirrored grids place differently)
    torch.testing.assert_close(corrected[inner], plain[inner], atol=2e-3, rtol=0)
    # without the correction, flips along the offset axis land two voxels off: the check can fail
    assert (ignored[inner] - plain[inner]).abs().max() > 0.2


def test_label_offset_must_match_the_image_dimensions() -> None:
    image = torch.zeros((1, 8, 8))
    with pytest.raises(ConfigError, match="label_offset has 3 values for a 2D image"):
        predict_case_logits(shifted_net(), image, roi_size=[8, 8], overlap=0.5,
                            device=torch.device("cpu"), amp_dtype=None, tta=True,
                            label_offset=[1.0, 0.0, 0.0])
