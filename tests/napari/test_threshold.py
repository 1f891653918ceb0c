"""Threshold and minimum-size controls: a kept result is relabelled from its
probabilities, in a worker, without running the network again."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.inference.postprocess import labels_from_probabilities
from medseg.io.image import ImageMeta, MedImage
from napari_plugin._geometry import from_layer_array, image_layer_data
from napari_plugin._run import Relabel, relabel


def _probabilities(shape, seed=0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(3, *shape)).astype(np.float32)
    logits = ndimage.uniform_filter(logits, size=(1,) + (5,) * len(shape)) * 8
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float16)


def test_relabel_threshold_and_min_size_by_hand() -> None:
    p = _probabilities((24, 20, 10))
    low = relabel(Relabel(p, (1.0, 1.0, 2.0), threshold=0.3))
    high = relabel(Relabel(p, (1.0, 1.0, 2.0), threshold=0.8))
    assert np.count_nonzero(high) < np.count_nonzero(low)
    assert np.all(low[high > 0] == high[high > 0])  # raising it only removes voxels
    fg = 1 - p[0].astype(np.float32)
    np.testing.assert_array_equal(high > 0, fg >= 0.8)
    big = relabel(Relabel(p, (1.0, 1.0, 2.0), threshold=0.3, min_voxels=40))
    for value in (1, 2):
        comps, _ = ndimage.label(big == value)
        sizes = np.bincount(comps.ravel())[1:]
        assert sizes.size == 0 or sizes.min() >= 40
        kept, _ = ndimage.label(low == value)
        all_sizes = np.bincount(kept.ravel())[1:]
        assert np.count_nonzero(big == value) == all_sizes[all_sizes >= 40].sum()


def test_relabel_repeats_the_runs_clean_up_at_every_threshold() -> None:
    from medseg.inference.postprocess import PostprocessConfig

    # two-class probabilities of a ring-shaped lesion (a dark cavity inside) and a far speck,
    # over 3 slices of a 2D model's volume
    fg = np.zeros((16, 16, 3), np.float32)
    fg[2:10, 2:10] = 0.9
    fg[4:8, 4:8] = 0.1
    fg[13, 13] = 0.6
    p = np.stack([1 - fg, fg]).astype(np.float16)
    post = PostprocessConfig(keep_largest=True, fill_holes=True)
    for threshold in (0.5, 0.55):
        labels = relabel(Relabel(p, (1.0, 1.0, 1.0), threshold=threshold, postprocess=post,
                                 per_slice=True))
        assert int(labels.sum()) == 64 * 3 and labels[13, 13, 0] == 0
    bare = relabel(Relabel(p, (1.0, 1.0, 1.0), threshold=0.5))
    assert int(bare.sum()) == (64 - 16 + 1) * 3


def test_relabel_instances_drops_small_objects_and_keeps_ids_consecutive() -> None:
    shape = (40, 40)
    p = np.zeros((3, *shape), np.float32)
    p[0] = 1.0
    for (r, c, rad) in [(10, 10, 6), (28, 28, 7), (10, 30, 2)]:  # two nuclei and a speck
        yy, xx = np.ogrid[:40, :40]
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= rad**2
        p[0][disc], p[1][disc] = 0.05, 0.9
        p[2][disc] = 0.05
    spec = {"method": "boundary", "min_size": 4, "seed_threshold": 0.7}
    all_objects = relabel(Relabel(p, (1.0, 1.0), threshold=0.5, instances=spec))
    assert all_objects.max() == 3
    big = relabel(Relabel(p, (1.0, 1.0), threshold=0.5, min_voxels=30, instances=spec))
    assert big.max() == 2 and set(np.unique(big)) == {0, 1, 2}


def test_labels_from_probabilities_sigmoid_and_bad_threshold() -> None:
    p = np.array([[0.2, 0.5, 0.9]], np.float32)
    assert labels_from_probabilities(p, 0.5).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="threshold"):
        labels_from_probabilities(p, 0.0)


@pytest.mark.gui
def test_threshold_controls_relabel_without_rerunning(segment, qtbot, monkeypatch) -> None:
    from medseg.inference import Segmenter

    calls = []
    real_predict = Segmenter.predict

    def counting_predict(self, *args, **kwargs):
        calls.append(1)
        return real_predict(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict", counting_predict)
    viewer, widget = segment
    meta = ImageMeta(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                     direction=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    array = np.random.default_rng(4).normal(size=(1, 24, 22, 20)).astype(np.float32)
    (data, kwargs, _), = image_layer_data(MedImage(array, meta), name="mr")
    widget.image_box.value = viewer.add_image(data, **kwargs)
    assert not widget.threshold.enabled
    widget.keep_probabilities.value = True
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert widget.threshold.enabled and widget.min_size.enabled
    result = viewer.layers["mr [medseg tiny]"]
    probability = viewer.layers["mr [medseg tiny] probability"]
    assert probability.data.shape == result.data.shape
    first = result.data.copy()
    kept = widget._kept[1].probabilities

    widget.threshold.value = 0.9
    qtbot.waitUntil(lambda: widget._relabel_worker is None and "0.90" in widget.status.value,
                    timeout=60_000)
    expected = relabel(Relabel(kept, (1.0, 1.0, 1.0), threshold=0.9))
    np.testing.assert_array_equal(from_layer_array(result.data), expected)
    assert np.count_nonzero(result.data) < np.count_nonzero(first)
    widget.threshold.value = 0.3
    widget.min_size.value = 50  # a change while the first relabel may still run
    qtbot.waitUntil(lambda: widget._relabel_worker is None and "min size 50" in
                    widget.status.value, timeout=60_000)
    expected = relabel(Relabel(kept, (1.0, 1.0, 1.0), threshold=0.3, min_voxels=50))
    np.testing.assert_array_equal(from_layer_array(result.data), expected)
    assert len(calls) == 1  # the network ran once


def test_the_threshold_control_starts_from_the_models_threshold() -> None:
    """A model whose card draws its labels at another threshold (``postprocess.threshold``)
    hands that threshold to the relabel job the control starts from."""
    import dataclasses

    from medseg.inference.engine import Prediction
    from napari_plugin._run import relabel_job

    meta = ImageMeta(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=((1, 0), (0, 1)))
    probs = _probabilities((8, 9))[:2]
    prediction = Prediction(labels=MedImage(np.zeros((1, 8, 9), np.uint8), meta),
                            probabilities=MedImage(probs, meta), threshold=0.7)

    class Request:  # what relabel_job reads of a run's request
        options = type("Options", (), {"probabilities": True})()
        image = MedImage(np.zeros((1, 8, 9), np.float32), meta)

    job = relabel_job(Request(), prediction)
    assert job is not None and job.threshold == 0.7
    assert relabel_job(Request(), dataclasses.replace(prediction, threshold=0.5)).threshold == 0.5
