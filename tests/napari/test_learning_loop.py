"""The learning loop in a real viewer (under Xvfb): correct, Add to training set, fine-tune,
see the new model in the Segment list, run it; closing mid-training."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.io import read_image, write_nifti
from napari_plugin._layers import labels_layer_data
from napari_plugin._review_widget import ReviewWidget

pytestmark = pytest.mark.gui

SERIES = ("hippocrop_dicom", "Study1", "13_HCropVolume")  # 51 x 35 x 32 MR, 1 mm


def test_add_a_corrected_volume_keeps_its_dicom_geometry(make_napari_viewer, qtbot,
                                                         shared_data: Path,
                                                         tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    series = shared_data.joinpath(*SERIES)
    (image_layer,) = viewer.open(str(series), plugin="medseg")
    source = read_image(series)
    labels = np.zeros(source.array.shape, np.uint8)
    labels[0, 10:20, 10:20, 1:3] = 1
    data, kwargs, _ = labels_layer_data(source.with_array(labels), name="seg",
                                        label_names={1: "anterior"},
                                        source_layer=image_layer.name, model="hippocampus")
    layer = viewer.add_labels(data, **kwargs)
    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(review)
    review.layer_box.value = layer
    layer.data[5, 40:45, 30:33] = 2  # a correction painted at (i 30..32, j 40..44, k 5)

    review.add_to_training_set()  # no folder chosen yet
    assert review.status.value.startswith("choose a training folder")
    review.training_folder.value = tmp_path / "train"
    review.add_to_training_set()
    qtbot.waitUntil(lambda: review._add_worker is None, timeout=20_000)
    assert review.status.value == "added HippoCrop in train/ (1 image with masks)"

    image_file = tmp_path / "train" / "images" / "HippoCrop.nii.gz"
    mask_file = tmp_path / "train" / "masks" / "HippoCrop.nii.gz"
    reference = tmp_path / "reference.nii.gz"
    write_nifti(source, reference)  # the series' own geometry, as medseg writes it
    np.testing.assert_allclose(nib.load(image_file).affine, nib.load(reference).affine,
                               atol=1e-4)
    np.testing.assert_allclose(nib.load(mask_file).affine, nib.load(reference).affine,
                               atol=1e-4)
    mask = np.asarray(nib.load(mask_file).dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(image_file).dataobj), source.array[0])
    assert mask[31, 42, 5] == 2 and mask[15, 15, 1] == 1 and int((mask == 2).sum()) == 15
