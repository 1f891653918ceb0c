"""A 2D model over a volume: slice by slice along the last axis, on the volume's own grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import ThresholdNet, ball_image, dice, oblique_meta, threshold_card

from medseg.errors import ModelError
from medseg.inference import Segmenter
from medseg.inference.batch import BatchOptions, predict_case
from medseg.inference.cases import CaseInput
from medseg.io import MedImage, read_dicom_seg, read_image, write_dicom_series


def _slicewise(roi: list[int] | None = None, whole_image: bool | None = None,
               **card_changes: object) -> Segmenter:
    card = dataclasses.replace(threshold_card(roi=roi or [16, 16]), **card_changes)
    return Segmenter(ThresholdNet(), card, device="cpu", whole_image=whole_image)


def test_2d_model_over_an_oblique_volume_keeps_every_slice_and_the_grid() -> None:
    meta = oblique_meta(3)
    image, mask = ball_image((41, 37, 30), meta)
    pred = _slicewise().predict(image, return_probabilities=True)
    assert pred.labels.array.shape == (1, 41, 37, 30)
    assert pred.labels.meta.same_grid(meta, atol_mm=1e-9)
    np.testing.assert_array_equal(pred.labels.array[0], mask)  # slices neither moved nor mixed
    assert pred.num_windows == 30 and pred.probabilities is not None
    assert pred.probabilities.array.shape == (2, 41, 37, 30)
    voxel_ml = float(np.prod(meta.spacing)) / 1000
    assert pred.volumes_ml["ball"] == pytest.approx(mask.sum() * voxel_ml, abs=1e-6)


def test_slices_per_pass_on_a_cpu_follow_the_precision_and_sw_batch_size() -> None:
    card = threshold_card(roi=[16, 16])
    bf16 = Segmenter(ThresholdNet(), card, device="cpu")
    bf16.amp_dtype = torch.bfloat16  # as on a CPU with native bf16
    fp32 = Segmenter(ThresholdNet(), card, device="cpu", amp=False)
    assert fp32.amp_dtype is None
    assert bf16._slices_per_pass((256, 256)) == 4
    assert fp32._slices_per_pass((256, 256)) == 2  # float32 activations: twice the bytes
    assert fp32._slices_per_pass((1024, 1024)) == 1
    assert Segmenter(ThresholdNet(), card, device="cpu", amp=False,
                     sw_batch_size=6)._slices_per_pass((256, 256)) == 6



def test_every_slice_lands_in_its_place_whatever_the_slices_per_pass(monkeypatch) -> None:
    meta = oblique_meta(3)
    image, mask = ball_image((41, 37, 11), meta)
    card = threshold_card(roi=[16, 16])
    for per_pass in (1, 3, 4, 11):  # 3 and 4: a last, shorter pass
        monkeypatch.setattr(Segmenter, "_slices_per_pass", lambda self, shape, n=per_pass: n)
        pred = Segmenter(ThresholdNet(), card, device="cpu").predict(
            image, return_probabilities=True)
        np.testing.assert_array_equal(pred.labels.array[0], mask)
        assert pred.probabilities is not None
        np.testing.assert_array_equal(pred.probabilities.array[1] > 0.5, mask)


def test_slices_larger_than_the_window_go_through_the_sliding_window_when_asked() -> None:
    meta = oblique_meta(3)
    image, mask = ball_image((41, 37, 12), meta, radius_mm=14.0)
    pred = _slicewise(roi=[16, 16], whole_image=False).predict(image)
    np.testing.assert_array_equal(pred.labels.array[0], mask)


def test_fov_pixels_resamples_each_slice_and_brings_labels_back() -> None:
    meta = oblique_meta(3, spacing=(0.5, 0.5, 2.0))
    image, mask = ball_image((64, 64, 9), meta, radius_mm=9.0)
    pred = _slicewise(roi=[32, 32], fov_pixels=[32, 32]).predict(image)
    assert pred.labels.array.shape == (1, 64, 64, 9)
    # downsampling by 2 blurs the ball's rim (the threshold net then widens it by about half
    # a pixel); what must hold is where it lands: every slice's centre within 0.2 pixel
    assert dice(pred.labels.array[0], mask) > 0.92
    for k in range(9):
        truth, got = np.argwhere(mask[..., k]), np.argwhere(pred.labels.array[0, ..., k])
        np.testing.assert_allclose(got.mean(0), truth.mean(0), atol=0.2)


def test_input_channels_picks_the_model_channel_of_a_multichannel_image() -> None:
    meta = oblique_meta(3)
    image, mask = ball_image((20, 21, 5), meta)
    three = np.zeros((3, 20, 21, 5), np.float32)
    three[1] = image.array[0]
    three[0] = three[2] = 1.0  # would be "all ball" if the wrong channel were taken
    pred = _slicewise(input_channels=[1]).predict(MedImage(three, meta))
    np.testing.assert_array_equal(pred.labels.array[0], mask)
    with pytest.raises(ModelError, match="expects 1 channel"):
        _slicewise().predict(MedImage(three, meta))


def test_3d_model_refuses_a_2d_image() -> None:
    card = threshold_card(roi=[8, 8, 8])
    image = MedImage(np.zeros((1, 10, 10), np.float32), oblique_meta(2))
    with pytest.raises(ModelError, match="3D but the image is 2D"):
        Segmenter(ThresholdNet(), card, device="cpu").predict(image)


def test_dicom_series_through_a_2d_model_gives_a_seg_frame_on_every_slice(tmp_path: Path
                                                                          ) -> None:
    meta = oblique_meta(3, spacing=(0.8, 0.8, 3.0))
    shape = (32, 30, 7)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cylinder = ((i - 15.2) ** 2 + (j - 14.1) ** 2 <= 36)[..., None].repeat(shape[2], axis=2)
    values = np.where(cylinder, 400.0, 0.0).astype(np.float32)[None]
    write_dicom_series(MedImage(values, meta), tmp_path / "series", modality="MR")
    segmenter = _slicewise()
    # the threshold net reads raw values: scale the card so 400 -> 1 and 0 -> 0
    segmenter.card.normalization = dataclasses.replace(segmenter.card.normalization,
                                                       scheme="scale", mean=0.0, std=400.0)
    record = predict_case(CaseInput("s", tmp_path / "series", kind="dicom"), segmenter,
                          tmp_path / "out", BatchOptions(formats=("nifti", "dicom-seg")))
    assert record.ok, record.error
    source = read_image(tmp_path / "series")
    seg = read_dicom_seg(tmp_path / "out" / record.outputs["dicom-seg"], source)
    np.testing.assert_array_equal(seg.array[0] > 0, cylinder)
    import pydicom

    ds = pydicom.dcmread(tmp_path / "out" / record.outputs["dicom-seg"])
    assert int(ds.NumberOfFrames) == shape[2]
    referenced = {fr.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for fr in ds.PerFrameFunctionalGroupsSequence}
    assert referenced == set(source.meta.provenance.sop_instance_uids)
    assert record.lesions and record.lesions[0]["first_slice"] == 1
    assert record.lesions[0]["last_slice"] == shape[2]


def test_uncertainty_of_a_single_sigmoid_output_is_the_binary_entropy() -> None:
    from medseg.inference.engine import Prediction
    from medseg.io import ImageMeta

    meta = ImageMeta.identity(2)
    p = np.array([[[0.5, 0.0], [1.0, 0.9]]], np.float16)
    pred = Prediction(labels=MedImage(np.zeros((1, 2, 2), np.uint8), meta),
                      probabilities=MedImage(p, meta))
    u = pred.uncertainty().array[0].astype(np.float64)
    q = 0.9
    expected = -(q * np.log(q) + (1 - q) * np.log(1 - q)) / np.log(2)
    np.testing.assert_allclose(u, [[1.0, 0.0], [0.0, expected]], atol=2e-3)


def test_card_postprocess_default_applies_unless_the_run_sets_its_own() -> None:
    from medseg.inference import PostprocessConfig
    from medseg.io import ImageMeta

    meta = ImageMeta.identity(3)
    values = np.zeros((1, 20, 20, 4), np.float32)
    values[0, 2:12, 2:12, 1:3] = 1.0  # 200 voxels = 0.2 mL
    values[0, 16, 16, 2] = 1.0  # one stray voxel
    image = MedImage(values, meta)
    default = _slicewise(postprocess={"min_size_ml": 0.01}).predict(image)
    assert int(default.labels.array.sum()) == 200  # the stray voxel is gone
    own = _slicewise(postprocess={"min_size_ml": 0.01})
    own = Segmenter(own.model, own.card, device="cpu",
                    postprocess=PostprocessConfig(keep_largest=True))
    assert own.postprocess == PostprocessConfig(keep_largest=True)
    assert int(_slicewise().predict(image).labels.array.sum()) == 201


def test_card_fill_holes_fills_each_slice_of_a_2d_models_volume() -> None:
    from medseg.inference import PostprocessConfig
    from medseg.io import ImageMeta

    # a lesion around a dark cavity that runs through the whole volume: enclosed in every
    # slice, open at both ends (a hole of each slice, not of the volume)
    values = np.zeros((1, 20, 20, 4), np.float32)
    values[0, 3:15, 3:15, :] = 1.0
    values[0, 6:12, 6:12, :] = 0.0
    image = MedImage(values, ImageMeta.identity(3))
    plain = _slicewise().predict(image)
    assert int(plain.labels.array.sum()) == (144 - 36) * 4
    filled = _slicewise(postprocess={"keep_largest": True, "fill_holes": True}).predict(image)
    assert int(filled.labels.array.sum()) == 144 * 4
    assert filled.postprocess == PostprocessConfig(keep_largest=True, fill_holes=True)
    assert filled.per_slice
    segmenter = _slicewise(postprocess={"fill_holes": True})
    assert segmenter.options()["fill_holes"] is True
    # the run's own clean-up replaces the card's, as for keep-largest
    own = Segmenter(segmenter.model, segmenter.card, device="cpu",
                    postprocess=PostprocessConfig(min_size_ml=0.001))
    assert int(own.predict(image).labels.array.sum()) == (144 - 36) * 4


def test_an_instance_model_over_a_volume_reports_objects_and_their_volume_in_ml() -> None:
    meta = oblique_meta(3)
    values = np.zeros((1, 20, 21, 6), np.float32)
    values[0, 2:6, 3:8, 1:3] = 1.0  # 40 voxels
    values[0, 12:15, 12:15, 2:5] = 1.0  # 27 voxels, apart from the first
    segmenter = _slicewise(instances={"method": "components", "min_size": 1})
    pred = segmenter.predict(MedImage(values, meta))
    assert pred.instances and pred.num_objects == 2
    ids = pred.labels.array[0]
    # each block is one object ("components" grows objects by one voxel into the gaps)
    assert len(np.unique(ids[2:6, 3:8, 1:3])) == 1 and len(np.unique(ids[12:15, 12:15, 2:5])) == 1
    assert ids[2, 3, 1] != ids[12, 12, 2] and ids.min() == 0
    voxel_ml = float(np.prod(meta.spacing)) / 1000
    assert pred.volumes_ml == {"objects": pytest.approx((ids > 0).sum() * voxel_ml, abs=1e-6)}
    assert pred.areas == {} and pred.area_unit == ""
