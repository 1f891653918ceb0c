"""Fixtures for the napari plugin tests: a tiny random-weight medseg model file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.model_card import ModelCard, save_model
from medseg.networks import build_network, plan_network

TINY_LABELS = {0: "background", 1: "anterior", 2: "posterior"}
TINY_COLORS = {1: (255, 0, 0), 2: (0, 0, 255)}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class 3D DynUNet with seeded random weights, saved as a medseg model file."""
    torch.manual_seed(0)
    config = plan_network(spatial_dims=3, in_channels=1, out_channels=3, patch_size=[16, 16, 16],
                          base_filters=4, max_filters=16)
    card = ModelCard(name="tiny", network=config, label_names=TINY_LABELS, roi_size=[16, 16, 16],
                     label_colors=TINY_COLORS)
    return save_model(tmp_path_factory.mktemp("models") / "tiny.safetensors",
                      build_network(config), card)


@pytest.fixture
def docked_segment(qtbot):
    """``docked_segment(viewer, model_file)``: the Segment widget docked in ``viewer``, set
    to the model file on the CPU, its engine imported (Run enabled)."""
    from napari_plugin._segment_widget import CHECKPOINT_CHOICE, SegmentWidget

    def dock(viewer, model: Path):
        widget = SegmentWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.model_box.value = CHECKPOINT_CHOICE
        widget.checkpoint.value = model
        widget.device_box.value = "cpu"
        qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
        return widget

    return dock


@pytest.fixture
def segment(make_napari_viewer, tiny_model: Path, docked_segment):
    """A viewer with the Segment widget docked, set to the tiny model on the CPU, its
    engine imported (Run enabled)."""
    viewer = make_napari_viewer()
    return viewer, docked_segment(viewer, tiny_model)
