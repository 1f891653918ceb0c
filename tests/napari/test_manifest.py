"""The npe2 manifest: valid, discovered through the entry point, every command importable."""

from __future__ import annotations

import numpy as np
import pytest
from npe2 import PluginManager, PluginManifest


def test_manifest_is_valid_and_discovered_through_the_entry_point() -> None:
    manifest = PluginManifest.from_distribution("medseg")
    assert manifest.name == "medseg"
    manifest.validate_imports()  # imports every python_name (readers, writer, widgets, sample)
    pm = PluginManager.instance()
    pm.discover()
    assert pm.get_manifest("medseg").name == "medseg"
    readers = [r.command for r in pm.iter_compatible_readers(["scan.nii.gz"])]
    assert "medseg.get_reader" in readers


def test_sample_data_is_a_ct_with_labels_on_the_same_grid() -> None:
    pm = PluginManager.instance()
    pm.discover()
    samples = {s.key: s for s in dict(pm.iter_sample_data())["medseg"]}
    assert set(samples) == {"synthetic_ct", "nuclei"}
    layers = samples["synthetic_ct"].open()
    (image, image_kwargs, image_type), (labels, labels_kwargs, labels_type) = layers
    assert (image_type, labels_type) == ("image", "labels")
    assert image.shape == labels.shape == (32, 128, 128)
    for key in ("scale", "translate", "affine", "metadata"):
        assert image_kwargs[key] == labels_kwargs[key] or key == "metadata"
    assert image_kwargs["scale"] == [5.0, 2.4, 2.4]
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels_kwargs["metadata"]["medseg_label_names"] == {"1": "liver", "2": "lesion"}
    liver_hu = float(np.median(image[labels == 1]))
    assert 80 < liver_hu < 150  # CT-like values, not noise


@pytest.mark.gui
def test_plugin_menu_widgets_sample_and_file_open_readers(make_napari_viewer, shared_data) -> None:
    from napari.plugins import _npe2

    from napari_plugin._review_widget import ReviewWidget
    from napari_plugin._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("medseg", "Segment")
    _, review = viewer.window.add_plugin_dock_widget("medseg", "Review labels")
    assert isinstance(segment, SegmentWidget) and isinstance(review, ReviewWidget)

    layers = viewer.open_sample("medseg", "synthetic_ct")
    assert [ly.name for ly in layers] == ["synthetic CT", "synthetic CT reference labels"]
    assert segment.image_box.value is layers[0]  # the widgets follow the layer list
    assert review.layer_box.value is layers[1]
    assert review.total.value.startswith("total ")

    # File > Open offers the medseg reader for every medical format and for DICOM folders
    series = shared_data / "hippocrop_dicom" / "Study1" / "13_HCropVolume"
    for path in ("scan.nii.gz", "scan.nii", "scan.nrrd", "scan.mha", "slice.dcm", str(series)):
        assert "medseg" in _npe2.get_readers(path), path


def test_nuclei_sample_opens_through_the_manifest() -> None:
    pm = PluginManager.instance()
    pm.discover()
    samples = {s.key: s for s in dict(pm.iter_sample_data())["medseg"]}
    ((data, kwargs, kind),) = samples["nuclei"].open()
    assert kind == "image" and data.shape == (256, 256) and data.max() > 0


def test_npe2_validate_is_clean_and_the_napari_page_lists_every_widget() -> None:
    """``npe2 validate medseg`` passes, and the napari page (docs/napari.md) names every
    widget the manifest declares, with its controls, and the reader, writer and samples."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    npe2 = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    done = subprocess.run([npe2, "validate", "medseg"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "valid" in done.stdout, done.stdout + done.stderr
    manifest = PluginManifest.from_distribution("medseg")
    page_file = Path(__file__).resolve().parents[2] / "docs" / "napari.md"
    page = " ".join(page_file.read_text().split())  # line breaks do not matter
    for widget in manifest.contributions.widgets:
        assert f"Plugins > medseg > {widget.display_name}" in page, widget.display_name
    for kind in ("a reader", "a writer", "Sample data"):
        assert kind in page
