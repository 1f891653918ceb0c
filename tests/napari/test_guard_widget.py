"""The compute guard in the Segment widget: an image far beyond the model's training images is
refused with the reason in the status line; 'force' runs it, a box in 'region' runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.model_card import ModelCard, save_model
from medseg.networks import build_network, plan_network

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def guarded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3D model whose card says it was trained on 16 mm cubes (one window)."""
    torch.manual_seed(0)
    config = plan_network(spatial_dims=3, in_channels=1, out_channels=2, patch_size=[16] * 3,
                          base_filters=4, max_filters=8)
    card = ModelCard(name="guarded", network=config, label_names={0: "bg", 1: "fg"},
                     roi_size=[16] * 3, target_spacing=[1.0, 1.0, 1.0],
                     domain={"unit": "mm", "extent": {"min": [16.0] * 3, "max": [16.0] * 3},
                             "spacing": {"min": [1.0] * 3, "max": [1.0] * 3}})
    return save_model(tmp_path_factory.mktemp("m") / "guarded.safetensors",
                      build_network(config), card)


def test_refused_then_forced_then_boxed(make_napari_viewer, qtbot, docked_segment,
                                        guarded_model) -> None:
    viewer = make_napari_viewer()
    widget = docked_segment(viewer, guarded_model)
    layer = viewer.add_image(np.zeros((48, 48, 48), np.float32), name="big")  # 216 windows
    widget.image_box.value = layer

    def run() -> None:
        widget.run_button.clicked.emit()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)

    run()
    assert widget.status.value.startswith("error: ")
    assert "refused before running: 216 windows of 16x16x16" in widget.status.value
    assert "(napari: force)" in widget.status.value and "(napari: region;" in widget.status.value
    assert [ly.name for ly in viewer.layers] == ["big"]
    widget.force.value = True
    assert widget._options().inference.force
    run()
    assert widget.status.value == "done: big [medseg guarded]"
    widget.force.value = False
    # a 16 x 16 rectangle drawn on a slice (the box spans every slice): 48 x 16 x 16 voxels
    corners = np.array([[0, 0.0, 0.0], [0, 0.0, 15.0], [0, 15.0, 15.0], [0, 15.0, 0.0]])
    viewer.add_shapes([corners], shape_type="rectangle", name="box")
    widget.region.value = "box"
    widget.image_box.value = layer
    run()
    assert widget.status.value == "done: big [medseg guarded]", widget.status.value
