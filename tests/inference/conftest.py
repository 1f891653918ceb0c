"""Fixtures for the inference tests (helpers live in ``inference_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from inference_helpers import tiny_card

from medseg.model_card import save_model


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card, net = tiny_card()
    return save_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", net, card)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread while these tests run (restored after): on the shared 2-core CI
    machine, OpenMP threads spin-waiting on a busy core make tiny windows 10x slower. No test
    here measures speed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
