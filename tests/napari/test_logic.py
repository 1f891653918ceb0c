"""The widgets' pure logic, tested without a viewer."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ImageWriteError, ModelError
from napari_plugin._logic import (
    colormap_dict,
    label_centroid,
    label_colors_for,
    label_volumes_ml,
    model_display_name,
    output_format,
    resolve_device,
    result_layer_name,
    slice_with_most,
)


def test_label_volumes_ml_counts_voxels_times_spacing() -> None:
    labels = np.zeros((35, 34, 33), np.uint8)
    labels[2:7, 3:5, 4:10] = 1  # 60 voxels
    labels[20, 20, 20] = 3
    volumes = label_volumes_ml(labels, (0.5, 0.8, 2.5), label_ids=(1, 2, 3))
    assert volumes == pytest.approx({1: 60 * 1.0 / 1000, 2: 0.0, 3: 1.0 / 1000}, abs=1e-12)
    assert list(volumes) == [1, 2, 3]


def test_slice_with_most_and_centroid() -> None:
    labels = np.zeros((10, 12, 14), np.int32)
    labels[3, 2:4, 2:4] = 5  # 4 voxels on slice 3
    labels[7, 5:8, 6:9] = 5  # 9 voxels on slice 7
    labels[1, 0, 0] = 2
    assert slice_with_most(labels, 5) == 7
    assert slice_with_most(labels, 5, axis=2) == 6  # columns 6..8 hold 3 each: first wins
    assert slice_with_most(labels, 9) is None
    np.testing.assert_allclose(label_centroid(labels, 5), [7.0, 6.0, 7.0])
    assert label_centroid(labels, 9) is None


def test_colormap_dict_hides_and_fades_labels() -> None:
    cmap = colormap_dict({1: (255, 0, 0), 2: (0, 128, 255)}, hidden={1}, opacity={2: 0.25})
    assert cmap[None][3] == 0.0 and cmap[0][3] == 0.0
    assert cmap[1] == (1.0, 0.0, 0.0, 0.0)
    assert cmap[2] == pytest.approx((0.0, 128 / 255, 1.0, 0.25))


def test_label_colors_prefers_card_colours_and_fills_the_rest() -> None:
    colors = label_colors_for([0, 1, 2, 3], {2: (1, 2, 3)})
    assert set(colors) == {1, 2, 3}
    assert colors[2] == (1, 2, 3)
    assert len({colors[1], colors[2], colors[3]}) == 3


def test_names() -> None:
    assert result_layer_name("CT", "liver") == "CT [medseg liver]"
    assert model_display_name("/m/hippo.v2.safetensors") == "hippo.v2"
    assert model_display_name("hippocampus") == "hippocampus"


def test_resolve_device() -> None:
    assert resolve_device("auto", cuda_available=False) is None
    assert resolve_device("cpu", cuda_available=False) == "cpu"
    assert resolve_device("cuda", cuda_available=True) == "cuda"
    assert resolve_device("cuda", cuda_available=None) == "cuda"  # not known yet: the engine checks
    with pytest.raises(ModelError, match="no CUDA GPU is available"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        resolve_device("tpu", cuda_available=True)


def test_output_format() -> None:
    assert output_format("/x/Mask.NII.GZ") == "nifti"
    assert output_format("a.nii") == "nifti"
    assert output_format("seg.dcm") == "dicom-seg"
    with pytest.raises(ImageWriteError, match=r"mask\.jpg: cannot tell the output format"):
        output_format("mask.jpg")
    assert output_format("cells.TIF") == "image2d"
