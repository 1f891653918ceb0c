"""One device/precision rule for training, inference and napari (medseg.devices)."""

from __future__ import annotations

import pytest
import torch

from medseg import devices
from medseg.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocast_is_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch,
                                                native: bool) -> None:
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else None
    assert devices.autocast_dtype(None, CPU) is expected
    assert devices.autocast_dtype("auto", CPU) is expected
    assert devices.autocast_dtype(True, CPU) is torch.bfloat16  # asked for: honoured
    assert devices.autocast_dtype("bf16", CPU) is torch.bfloat16
    assert devices.autocast_dtype(False, CPU) is None and devices.autocast_dtype("off", CPU) is None
    with pytest.raises(ConfigError, match="fp16 autocast is for CUDA"):
        devices.autocast_dtype("fp16", CPU)
    with pytest.raises(ConfigError, match="amp must be auto, on, off, bf16 or fp16"):
        devices.autocast_dtype("half", CPU)


@pytest.mark.parametrize("bf16_ok", [True, False])
def test_cuda_auto_is_bf16_where_the_gpu_supports_it(monkeypatch: pytest.MonkeyPatch,
                                                     bf16_ok: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    expected = torch.bfloat16 if bf16_ok else torch.float16
    assert devices.autocast_dtype(None, cuda) is expected
    assert devices.autocast_dtype("fp16", cuda) is torch.float16


def test_training_and_inference_pick_the_same_precision() -> None:
    from medseg.inference import InferenceOptions, Segmenter
    from medseg.model_card import ModelCard
    from medseg.networks import NetworkConfig
    from medseg.training.runtime import pick_runtime

    card = ModelCard(name="p", network=NetworkConfig(spatial_dims=2, in_channels=1,
                                                     out_channels=2),
                     label_names={0: "bg", 1: "fg"}, roi_size=[8, 8])
    for amp_train, amp_infer in (("auto", None), ("off", False), ("bf16", True)):
        engine = Segmenter(torch.nn.Identity(), card, InferenceOptions(device="cpu",
                                                                       amp=amp_infer))
        assert pick_runtime(device="cpu", amp=amp_train).amp_dtype is engine.amp_dtype


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_config_error_everywhere() -> None:
    from medseg.training.runtime import pick_runtime

    with pytest.raises(ConfigError, match="no CUDA device is available here"):
        devices.resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA device is available here"):
        pick_runtime(device="cuda", amp="auto")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        devices.resolve_device("tpu")
