"""Correct next (under Xvfb): a folder ranked least confident first, a click opens and
segments the image; the fit banner's way out opens the learning panels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from napari.layers import Image, Labels

from napari_plugin._next_widget import NextImageWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def folder(shared_data: Path, tmp_path: Path) -> Path:
    for kind, source in (("he", "dsb2018_brightfield"), ("fl", "dsb2018_nuclei")):
        for p in sorted((shared_data / source / "images").glob("*.png"))[:2]:
            shutil.copy(p, tmp_path / f"{kind}_{p.name[:6]}.png")
    return tmp_path


def test_rank_a_folder_and_open_the_least_confident_image(make_napari_viewer, qtbot,
                                                          folder: Path) -> None:
    viewer = make_napari_viewer()
    widget = NextImageWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_box.value = "nuclei"
    widget.folder.value = folder
    widget.rank()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    lines = [widget.list.item(i).text() for i in range(widget.list.count())]
    assert [line.split(". ")[1][:2] for line in lines] == ["he", "he", "fl", "fl"]
    assert lines[0].startswith("1. he_") and "confidence 0." in lines[0]

    layer = widget.open_row(0)  # what a click on the first line does
    assert isinstance(layer, Image) and layer.rgb and layer.name == widget.rows[0].name
    assert viewer.layers.selection.active is layer
    qtbot.waitUntil(lambda: any(isinstance(ly, Labels) for ly in viewer.layers),
                    timeout=60_000)
    (result,) = [ly for ly in viewer.layers if isinstance(ly, Labels)]
    assert result.name == f"{layer.name} [medseg nuclei]" and result.data.max() > 0
    assert widget.open_row(0) is layer  # opened once: a second click selects it
    assert sum(isinstance(ly, Image) for ly in viewer.layers) == 1


def test_the_banner_offers_fine_tuning_on_an_he_image(make_napari_viewer, qtbot,
                                                      shared_data: Path) -> None:
    from napari_plugin._learn import FINETUNE_OFFER
    from napari_plugin._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    png = sorted((shared_data / "dsb2018_brightfield" / "images").glob("*.png"))[0]
    (image,) = viewer.open(str(png), plugin="medseg")
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    segment.model_box.value = "nuclei"
    segment.device_box.value = "cpu"
    segment.image_box.value = image
    segment.run()
    qtbot.waitUntil(lambda: segment.worker is None, timeout=60_000)
    assert segment.fit_banner.value.startswith("These images look different")
    assert "p25" in segment.fit_banner.tooltip
    offer = segment.fine_tune_offer  # (.visible is False while the viewer is not shown)
    assert not offer.native.isHidden() and offer.text == FINETUNE_OFFER
    segment.fine_tune_offer.changed.emit(True)  # the click
    panel = viewer.window._wrapped_dock_widgets["Fine-tune (medseg)"].inner_widget()
    assert panel.base_box.value == "nuclei"
    assert "Review labels (medseg)" in viewer.window._wrapped_dock_widgets
