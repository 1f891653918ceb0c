"""Review widget in a real viewer (under Xvfb): volumes, display controls, jump, save round trip."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.io import read_dicom_seg, read_image
from medseg.io.image import ImageMeta
from napari_plugin._geometry import META_KEY
from napari_plugin._layers import labels_layer_data
from napari_plugin._review_widget import ReviewWidget

pytestmark = pytest.mark.gui

SERIES = ("hippocrop_dicom", "Study1", "13_HCropVolume")  # 51 x 35 x 32 MR, 1 mm


def _open_with_labels(viewer, series: Path):
    """Open a real DICOM series, add a two-label layer on its grid and the review widget."""
    (image_layer,) = viewer.open(str(series), plugin="medseg")
    source = read_image(series)
    labels = np.zeros(source.array.shape, np.uint8)
    labels[0, 10:20, 10:20, 1:3] = 1  # 200 voxels on slices k = 1, 2
    labels[0, 30:35, 20:24, 2] = 2  # 20 voxels on slice k = 2
    data, kwargs, _ = labels_layer_data(
        source.with_array(labels), name="seg", label_names={1: "anterior", 2: "posterior"},
        label_colors={1: (255, 0, 0)}, source_layer=image_layer.name,
    )
    layer = viewer.add_labels(data, **kwargs)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.layer_box.value = layer
    return viewer, widget, layer, source


@pytest.fixture
def review(make_napari_viewer, shared_data: Path):
    return _open_with_labels(make_napari_viewer(), shared_data.joinpath(*SERIES))


def _row(widget: ReviewWidget, value: int):
    return next(row for row in widget.rows if row.value == value)


def test_volumes_follow_painting(review, qtbot) -> None:
    viewer, widget, layer, source = review
    voxel_ml = float(np.prod(source.meta.spacing)) / 1000
    assert _row(widget, 1).volume.value == f"{200 * voxel_ml:.2f} mL"
    assert _row(widget, 2).volume.value == f"{20 * voxel_ml:.2f} mL"
    layer.brush_size = 1
    layer.paint((25, 0, 0), 3, refresh=True)  # a new label value gets its own row
    qtbot.waitUntil(lambda: any(row.value == 3 for row in widget.rows), timeout=3000)
    assert _row(widget, 3).shown.text == "3 label 3"
    layer.fill((1, 15, 15), 0)  # erase label 1 on slice k = 1 (100 voxels)
    qtbot.waitUntil(lambda: _row(widget, 1).volume.value == f"{100 * voxel_ml:.2f} mL",
                    timeout=3000)
    layer.undo()  # napari's undo emits no paint event; the volumes must follow it too
    qtbot.waitUntil(lambda: _row(widget, 1).volume.value == f"{200 * voxel_ml:.2f} mL",
                    timeout=3000)


def test_show_hide_opacity_and_contour(review) -> None:
    _, widget, layer, _ = review
    _row(widget, 1).shown.value = False
    assert layer.colormap.color_dict[1][3] == 0.0
    assert layer.colormap.color_dict[2][3] == 1.0
    _row(widget, 1).shown.value = True
    _row(widget, 2).opacity.value = 0.25
    np.testing.assert_allclose(layer.colormap.color_dict[1], [1.0, 0.0, 0.0, 1.0])
    assert layer.colormap.color_dict[2][3] == pytest.approx(0.25)
    widget.contour.value = 2
    assert layer.contour == 2


def test_jump_to_the_slice_with_most_label(review) -> None:
    viewer, widget, layer, source = review
    _row(widget, 2).jump.clicked.emit()
    z_world = source.meta.index_to_world([[0, 0, 2]])[0][2]
    assert viewer.dims.point[0] == pytest.approx(z_world, abs=1e-6)
    assert layer.selected_label == 2
    assert layer.world_to_data(viewer.dims.point)[0] == pytest.approx(2)


def test_save_nifti_keeps_the_source_affine_even_if_the_layer_is_rescaled(
    review, tmp_path: Path
) -> None:
    _, widget, layer, source = review
    layer.scale = (9.0, 9.0, 9.0)  # a display change must not leak into the saved geometry
    out = tmp_path / "corrected.nii.gz"
    widget.save_path.value = out
    widget.save_button.clicked.emit()
    assert widget.status.value == "saved corrected.nii.gz"
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, source.meta.affine_ras(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj), layer.data.T)


def test_save_dicom_seg_round_trip(make_napari_viewer, shared_data: Path, tmp_path: Path) -> None:
    import highdicom as hd

    series = shared_data / "dcmqi_ct3slice_seg" / "ct-3slice"  # 512 x 512 x 3 CT with UIDs
    _, widget, layer, source = _open_with_labels(make_napari_viewer(), series)
    layer.paint((0, 400, 400), 2)
    out = tmp_path / "corrected.dcm"
    widget.save_path.value = out
    widget.save_button.clicked.emit()
    assert widget.status.value == "saved corrected.dcm", widget.status.value
    seg = hd.seg.segread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior", "posterior"]
    back = read_dicom_seg(out, source)
    np.testing.assert_array_equal(back.array[0], layer.data.T)


def test_save_refuses_an_unknown_format_and_names_it(review, tmp_path: Path) -> None:
    _, widget, _, _ = review
    widget.save_path.value = tmp_path / "mask.jpg"
    widget.save_button.clicked.emit()
    assert widget.status.value.startswith("not saved: ")
    assert "mask.jpg: cannot tell the output format" in widget.status.value
    assert not (tmp_path / "mask.jpg").exists()


def test_reader_layer_keeps_meta_for_saving(review, shared_data: Path) -> None:
    viewer, _, _, source = review
    image_layer = viewer.layers[0]
    assert ImageMeta.from_dict(image_layer.metadata[META_KEY]) == source.meta


def test_lesion_table_is_measured_on_binding_and_on_refresh_not_per_stroke(review) -> None:
    _, widget, layer, _ = review
    assert widget.measures_title.value.startswith("2 lesions, ")
    assert not widget.measures_refresh.native.isHidden()  # offered for a volume
    data = np.array(layer.data)
    data[25:27, 40:42, 2:4] = 1  # a third, separate lesion (napari order k, j, i)
    layer.data = data
    widget.refresh_volumes()  # what an edit triggers: volumes yes, lesion table no
    assert widget.measures_title.value.startswith("2 lesions, ")
    widget.measures_refresh.clicked.emit()
    assert widget.measures_title.value.startswith("3 lesions, ")


def test_save_with_no_file_chosen_asks_for_one(review, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty file box (napari's FileEdit gives the current folder) must not be reported as
    'cannot tell the output format' of that folder: the user is asked to choose a file."""
    _, widget, _, _ = review
    monkeypatch.chdir(tmp_path)
    widget.save_path.value = ""
    widget.save_button.clicked.emit()
    assert widget.status.value.startswith("choose a file to save to")
    assert list(tmp_path.iterdir()) == []


def test_a_new_result_is_reviewed_with_fresh_state_and_files_are_not_overwritten_silently(
        review, tmp_path: Path) -> None:
    """Defect: the widget kept the previous layer's status and save path, did not switch to a
    new result, and Save after choosing another layer overwrote the earlier file."""
    viewer, widget, first, source = review
    target = tmp_path / "first.nii.gz"
    widget.save_path.value = str(target)
    widget.save_button.clicked.emit()
    assert widget.status.value == "saved first.nii.gz"
    before = target.read_bytes()

    labels = np.zeros(source.array.shape, np.uint8)
    labels[0, 5:9, 5:9, 4] = 1
    data, kwargs, _ = labels_layer_data(source.with_array(labels), name="second",
                                        label_names={1: "anterior"}, model="hippocampus")
    second = viewer.add_labels(data, **kwargs)
    assert widget.layer_box.value is second  # a new medseg result is what the user reviews
    assert widget.status.value == ""
    assert Path(widget.save_path.value).is_dir()  # no file chosen yet for this layer

    widget.save_path.value = str(target)  # the other layer's file
    widget.save_button.clicked.emit()
    assert "already exists" in widget.status.value and "Save again" in widget.status.value
    assert target.read_bytes() == before  # not written
    widget.save_button.clicked.emit()  # the user confirms
    assert widget.status.value == "saved first.nii.gz"
    assert np.asarray(nib.load(target).dataobj).sum() == 16

    widget.layer_box.value = first  # each layer keeps its own target
    assert Path(widget.save_path.value) == target and widget.status.value == ""
    widget.layer_box.value = second
    widget.save_button.clicked.emit()  # its own file now: saved again without asking
    assert widget.status.value == "saved first.nii.gz"


def test_keyboard_shortcuts_step_labels_and_lesions_and_save(review, tmp_path: Path) -> None:
    """Alt+J / Alt+K: next / previous label; Alt+N / Alt+B: next / previous lesion; Alt+S:
    save. Bound on the viewer while the widget is open, dispatched as napari does."""
    from napari.utils.key_bindings import KeyBinding

    from napari_plugin._review_widget import SHORTCUTS

    viewer, widget, layer, source = review

    def press(key: str) -> None:
        func = viewer.keymap[KeyBinding.from_str(key)]
        func(viewer)

    assert {str(KeyBinding.from_str(k)) for k in SHORTCUTS} <= {str(k) for k in viewer.keymap}
    assert "Alt+S save the labels" in widget.keys_help.value
    layer.selected_label = 1
    press("Alt-J")
    assert layer.selected_label == 2
    z_world = source.meta.index_to_world([[0, 0, 2]])[0][2]
    assert viewer.dims.point[0] == pytest.approx(z_world, abs=1e-6)  # moved to label 2
    press("Alt-J")
    assert layer.selected_label == 1  # wraps around
    press("Alt-K")
    assert layer.selected_label == 2
    assert widget.item.value == 1
    press("Alt-N")
    assert widget.item.value == 2
    press("Alt-N")
    assert widget.item.value == 1  # two lesions: wraps
    press("Alt-B")
    assert widget.item.value == 2
    widget.save_path.value = tmp_path / "seg.nii.gz"
    press("Alt-S")
    assert (tmp_path / "seg.nii.gz").exists() and widget.status.value == "saved seg.nii.gz"
