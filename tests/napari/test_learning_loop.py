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


# -- the whole loop: a tiny 2D instance model fine-tuned for seconds ---------------------------
CROP = (slice(0, 64), slice(0, 80))  # rows, columns of the real H&E images


@pytest.fixture
def tiny_nuclei(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The nuclei model's card (instances, channel rule, domain) on a tiny random network;
    fine-tuned models go to a temporary user models folder."""
    import dataclasses

    import torch

    from medseg.model_card import read_model_card, save_model
    from medseg.models import resolve_model
    from medseg.networks import build_network, plan_network

    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(tmp_path / "my-models"))
    torch.manual_seed(0)
    card = read_model_card(resolve_model("nuclei"))
    network = plan_network(spatial_dims=2, in_channels=1, out_channels=3, patch_size=[64, 64],
                           base_filters=4, max_filters=16)
    # a recipe that learns in a few hundred steps (fine-tuned at 0.3 x its learning rate)
    config = {**card.training["config"], "batch_size": 2, "patch_size": [64, 64], "lr": 0.05}
    card = dataclasses.replace(card, name="tiny-nuclei", network=network, roi_size=[64, 64],
                               training={**card.training, "config": config})
    return save_model(tmp_path / "tiny-nuclei.safetensors", build_network(network), card)


def _he_crops(shared_data: Path, folder: Path, n: int) -> list[tuple[Path, np.ndarray]]:
    """``n`` real H&E crops as RGBA PNGs and their true object ids (rows x columns)."""
    from PIL import Image as PILImage
    from skimage.segmentation import relabel_sequential

    source = shared_data / "dsb2018_brightfield"
    out = []
    for png in sorted((source / "images").glob("*.png"))[:n]:
        with PILImage.open(png) as im:
            pixels = np.asarray(im)[CROP]
        with PILImage.open(source / "masks" / png.name) as im:
            truth = relabel_sequential(np.asarray(im)[CROP])[0].astype(np.uint16)
        path = folder / f"he_{png.stem[:6]}.png"
        PILImage.fromarray(pixels).save(path)
        out.append((path, truth))
    return out


def _segment(viewer, segment, qtbot, image):
    from napari.layers import Labels

    before = {id(ly) for ly in viewer.layers}
    segment.image_box.value = image
    segment.run()
    qtbot.waitUntil(lambda: segment.worker is None, timeout=60_000)
    (result,) = [ly for ly in viewer.layers if isinstance(ly, Labels) and id(ly) not in before]
    return result


@pytest.mark.slow  # about 40 s: three images segmented and added, half a minute of fine-tuning
def test_correct_add_finetune_and_run_the_new_model(make_napari_viewer, qtbot, tmp_path: Path,
                                                    shared_data: Path,
                                                    tiny_nuclei: Path) -> None:
    from PIL import Image as PILImage

    from napari_plugin._finetune_widget import show_learning_panels
    from napari_plugin._learn import model_name
    from napari_plugin._segment_widget import CHECKPOINT_CHOICE, SegmentWidget

    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("medseg", "Segment")  # Plugins menu
    assert isinstance(segment, SegmentWidget)
    segment.model_box.value = CHECKPOINT_CHOICE
    segment.checkpoint.value = tiny_nuclei
    segment.device_box.value = "cpu"
    panel = show_learning_panels(viewer, base_model=str(tiny_nuclei))
    _, review = viewer.window.add_plugin_dock_widget("medseg", "Review labels")
    review.training_folder.value = tmp_path / "train"

    crops = _he_crops(shared_data, tmp_path, 3)
    for png, truth in crops:
        (image,) = viewer.open(str(png), plugin="medseg")
        assert image.rgb
        result = _segment(viewer, segment, qtbot, image)
        assert review.layer_box.value is result  # a new result becomes the reviewed layer
        result.data = truth  # the reviewer's corrections...
        result.brush_size = 3
        result.paint((60, 5), 500, refresh=True)  # ...including a stroke of napari's brush
        review.add_to_training_set()
        qtbot.waitUntil(lambda: review._add_worker is None, timeout=20_000)
        assert review.status.value.startswith(f"added {png.stem} in train/")
        with PILImage.open(tmp_path / "train" / "masks" / png.name) as im:
            np.testing.assert_array_equal(np.asarray(im), result.data)
        assert np.asarray(result.data)[60, 5] == 500
    assert panel.folder_info.value == "3 images with masks"  # the panel follows Review
    assert panel.base_box.value == CHECKPOINT_CHOICE and panel.checkpoint.value == tiny_nuclei

    seen: list[str] = []

    def finished() -> bool:  # what the panel shows, polled while it runs
        seen.append(str(panel.status.value))
        return panel.worker is None

    panel.minutes.value = 0.5  # a few seconds go to scoring the base and the result
    panel.name.value = "tiny-he"
    panel.start()
    qtbot.waitUntil(finished, timeout=180_000)
    outcome = panel.last_result
    assert outcome is not None, panel.status.value
    assert outcome.steps > 0 and outcome.train_cases and outcome.val_cases
    assert any(s.startswith("training: step ") and " left" in s for s in seen), seen[:3] + seen[-3:]
    assert panel.progress.value == panel.progress.max
    assert panel.result.value.startswith(f"{outcome.metric} on ")
    assert f"{outcome.before:.3f} before, {outcome.after:.3f} after" in panel.result.value
    if outcome.improved:  # better: in the Segment list by name
        assert "tiny-he" in segment.model_box.choices
        assert "saved as tiny-he" in panel.result.value
    else:  # not better: a candidate, outside the list, said so
        assert "tiny-he" not in segment.model_box.choices
        assert "kept only as the candidate" in panel.result.value
    assert outcome.model_path.is_file()

    image = viewer.layers[crops[0][0].stem]
    viewer.layers.selection.active = image
    panel.use_button.changed.emit(True)  # one click: the new model on the current image
    qtbot.waitUntil(lambda: segment.worker is None, timeout=60_000)
    result_name = f"{image.name} [medseg {model_name(outcome.model_path)}]"
    assert segment.status.value == f"done: {result_name}"
    # the new card's colour rule applied to the RGB layer as medseg-predict applies it to
    # the PNG file
    from medseg.inference import Segmenter
    from medseg.model_card import read_model_card

    assert read_model_card(outcome.model_path).channel_rule is not None
    expected = Segmenter.from_file(outcome.model_path, device="cpu").predict(
        read_image(crops[0][0])).labels.array[0]
    np.testing.assert_array_equal(viewer.layers[result_name].data, expected.T)


def test_closing_the_viewer_mid_training_stops_it_and_keeps_the_corrections(
        make_napari_viewer, qtbot, tmp_path: Path, shared_data: Path,
        tiny_nuclei: Path) -> None:
    import hashlib
    import time

    from napari_plugin._finetune_widget import FineTuneWidget
    from napari_plugin._learn import add_correction, capture_correction
    from napari_plugin._reader import read_layers

    folder = tmp_path / "train"
    for png, truth in _he_crops(shared_data, tmp_path, 3):  # corrections saved earlier
        from napari.layers import Image, Labels

        (data, kwargs, _), = read_layers(str(png))
        image = Image(data, **kwargs)
        add_correction(folder, capture_correction(Labels(truth), [image]))
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}

    viewer = make_napari_viewer()
    panel = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(panel)
    panel.set_base_model(str(tiny_nuclei))
    panel.folder.value = folder
    panel.minutes.value = 2.0
    job = panel.job
    panel.start()
    qtbot.waitUntil(lambda: str(panel.status.value).startswith("training: step"),
                    timeout=60_000)
    closed_at = time.monotonic()
    viewer.close()
    qtbot.waitUntil(lambda: job.worker is None, timeout=60_000)
    assert time.monotonic() - closed_at < 30  # stopped, not run to its 2-minute end
    assert job.closed and job.cancel_event.is_set()
    from medseg.models import list_models

    models = tmp_path / "my-models"  # nothing exported, no candidate (the run keeps its log)
    assert not list(models.glob("*.safetensors")) and not list(models.glob("candidates/*"))
    assert list_models() == list_models(user=False)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*.png")} == digest  # every saved correction intact
