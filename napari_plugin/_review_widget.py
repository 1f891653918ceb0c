"""Review widget: per-label volumes (areas for 2D), show/hide, opacity, contours, jump-to-label,
the table of objects (2D) or lesions (3D) with a jump to each, saving, and *Add to training
set* (the image and the corrected labels into a training folder the Fine-tune panel learns
from; :mod:`napari_plugin._learn`).

The logic lives in :mod:`napari_plugin._logic` (volumes, slices, colours) and
:mod:`napari_plugin._save` (writing); this module only wires napari events and widgets to it.
Painting itself is napari's own labels tools.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    PushButton,
    SpinBox,
    Table,
    create_widget,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QScrollArea
from superqt.utils import create_worker

from medseg.errors import MedsegError
from napari_plugin._geometry import meta_from_layer
from napari_plugin._layers import (
    INSTANCES_KEY,
    MODEL_KEY,
    label_colormap,
    stored_label_colors,
    stored_label_names,
)
from napari_plugin._learn import add_correction, capture_correction, loop_state
from napari_plugin._logic import (
    Measurements,
    label_centroid,
    label_colors_for,
    label_counts,
    label_volumes_ml,
    layer_measurements,
)
from napari_plugin._save import labels_from_layer, save_labels

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

#: Delay (ms) that groups bursts of edits into one volume recount.
RECOUNT_DELAY_MS = 150
#: Layer metadata: the file this widget last saved the layer to (its own save target).
SAVE_PATH_KEY = "medseg_save_path"
#: Review shortcuts, bound on the viewer while the widget is open: ``{key: (action, method,
#: argument)}``. Alt + a letter that napari's menus (F, V, L, P, D, W, H) and the labels
#: layer's own keys leave free.
SHORTCUTS: dict[str, tuple[str, str, Any]] = {
    "Alt-J": ("next label", "step_label", 1),
    "Alt-K": ("previous label", "step_label", -1),
    "Alt-N": ("next object / lesion", "step_item", 1),
    "Alt-B": ("previous object / lesion", "step_item", -1),
    "Alt-S": ("save the labels", "save", None),
}


class _LabelRow(Container):
    """One label: visibility checkbox with its name, volume, opacity slider, jump button."""

    def __init__(self, value: int, name: str) -> None:
        super().__init__(layout="horizontal", labels=False)
        self.value = value
        self.shown = CheckBox(value=True, text=f"{value} {name}")
        self.volume = Label(value="")
        self.opacity = FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05, readout=False)
        self.opacity.tooltip = f"opacity of label {value}"
        self.opacity.max_width = 110
        self.jump = PushButton(text="Go")
        self.jump.tooltip = "Jump to the slice holding the most of this label"
        self.extend([self.shown, self.volume, self.opacity, self.jump])
        self.native.layout().insertStretch(2)  # sliders and buttons line up on the right
        self.margins = (0, 0, 0, 0)


def _scroll_area(content: Container) -> QScrollArea:
    """A vertical scroll area around ``content`` (a CT can carry a hundred labels).

    Hand-made because magicgui's ``Container(scrollable=True)`` let the rows grow the whole
    napari window instead of scrolling (magicgui 0.10).
    """
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setMinimumHeight(160)
    area.setWidget(content.native)
    return area


class ReviewWidget(Container):
    """Review and correct a medseg labels layer, then save it on the source geometry."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.layer_box = create_widget(annotation=Labels, label="labels")
        self.rows = Container(labels=False)
        self.contour = SpinBox(value=0, min=0, max=10, label="contour")
        self.contour.tooltip = "0 fills the labels; n > 0 draws n-pixel outlines"
        self.total = Label(value="")
        self.measures_title = Label(value="")
        self.measures = Table(value=None)
        self.measures.read_only = True
        self.measures.min_height = 120
        self.item = SpinBox(value=1, min=1, max=1, label="object / lesion")
        self.item_go = PushButton(text="Go to it")
        self.item_go.tooltip = "Move to the selected object or lesion (its centroid)"
        self.measures_refresh = PushButton(text="Refresh lesion table")
        self.measures_refresh.tooltip = ("Measure the lesions again after editing (a volume's "
                                         "table is measured when the layer is chosen, not on "
                                         "every brush stroke)")
        self.save_path = FileEdit(mode="w", filter="*.nii.gz *.nii *.dcm *.tif",
                                  label="save as")
        self.save_button = PushButton(text="Save labels")
        # the learning loop: the corrected labels and their image into a training folder
        self.training_folder = FileEdit(mode="d", label="training folder")
        self.training_folder.tooltip = ("folder of images/ and masks/ that Fine-tune learns "
                                        "from (made if missing)")
        self.add_button = PushButton(text="Add to training set")
        self.add_button.tooltip = ("write the image and these corrected labels into the "
                                   "training folder (the same image again replaces its mask)")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.keys_help = Label(value="keys: " + ", ".join(
            f"{key.replace('-', '+')} {action}" for key, (action, _, _) in SHORTCUTS.items()))
        self.keys_help.native.setWordWrap(True)
        self.extend([self.layer_box, self.contour, self.total, self.measures_title,
                     self.measures, self.item, self.item_go, self.measures_refresh,
                     self.save_path, self.save_button, self.training_folder,
                     self.add_button, self.status, self.keys_help])
        self._measurements: Measurements | None = None
        self.item_go.changed.connect(lambda *_: self.jump_to_item(self.item.value))
        self.measures_refresh.changed.connect(lambda *_: self._refresh_measurements())
        self.native.layout().insertWidget(2, _scroll_area(self.rows))
        self._layer: Labels | None = None
        self._history: tuple[int, int] | None = None
        # parented to the widget, so a pending recount dies with it instead of firing into
        # deleted Qt labels
        self._recount_timer = QTimer(self.native)
        self._recount_timer.setSingleShot(True)
        self._recount_timer.setInterval(RECOUNT_DELAY_MS)
        self._recount_timer.timeout.connect(self.refresh_volumes)
        self._overwrite_armed: Path | None = None  # a file the user was asked about
        self.layer_box.changed.connect(self._on_layer_changed)
        self.contour.changed.connect(self._on_contour)
        self.save_button.changed.connect(self.save)
        self.add_button.changed.connect(self.add_to_training_set)
        self._add_worker: Any = None
        self._closed = False
        self.native.destroyed.connect(self._on_closed)
        folder = loop_state(napari_viewer).training_folder
        if folder is not None:
            self.training_folder.value = folder
        self.training_folder.changed.connect(self._on_training_folder)
        self._on_layer_changed(self.layer_box.value)
        # a new medseg result becomes the reviewed layer; stop listening once closed
        layers_inserted = napari_viewer.layers.events.inserted
        layers_inserted.connect(self._on_layer_inserted)
        self.native.destroyed.connect(lambda *_: layers_inserted.disconnect(
            self._on_layer_inserted))
        self._bind_shortcuts()

    def _bind_shortcuts(self) -> None:
        """Bind :data:`SHORTCUTS` on the viewer; unbound when the widget closes."""
        viewer = self._viewer

        def action(method: str, argument: Any) -> Any:
            def run(_viewer: Any) -> None:
                if argument is None:
                    getattr(self, method)()
                else:
                    getattr(self, method)(argument)
            return run

        for key, (_, method, argument) in SHORTCUTS.items():
            viewer.bind_key(key, action(method, argument), overwrite=True)

        def unbind(*_: Any) -> None:
            for key in SHORTCUTS:
                viewer.bind_key(key, None)
        self.native.destroyed.connect(unbind)

    # -- layer binding ----------------------------------------------------------------------
    def _on_layer_inserted(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if isinstance(layer, Labels) and layer.metadata.get(MODEL_KEY):
            self.layer_box.reset_choices()
            self.layer_box.value = layer

    def _on_layer_changed(self, layer: Labels | None) -> None:
        # nothing of the previous layer carries over: its status, its save target
        self.status.value = ""
        self._overwrite_armed = None
        self.save_path.value = (layer.metadata.get(SAVE_PATH_KEY) or "") if layer else ""
        if self._layer is not None:
            self._layer.events.paint.disconnect(self._schedule_recount)
            self._layer.events.data.disconnect(self._schedule_recount)
            self._layer.events.set_data.disconnect(self._on_set_data)
        self._layer = layer
        if layer is not None:
            layer.events.paint.connect(self._schedule_recount)
            layer.events.data.connect(self._schedule_recount)
            layer.events.set_data.connect(self._on_set_data)
            self.contour.value = int(layer.contour)
        self._history = self._history_lengths()
        self._rebuild_rows()
        if layer is None or layer.ndim != 2:  # a 2D table follows every recount already
            self._refresh_measurements()
        self.measures_refresh.visible = layer is not None and layer.ndim != 2

    def _schedule_recount(self, event: Any = None) -> None:
        self._recount_timer.start()

    def _history_lengths(self) -> tuple[int, int] | None:
        """Lengths of the layer's undo/redo stacks (``None`` where napari hides them)."""
        undo = getattr(self._layer, "_undo_history", None)
        redo = getattr(self._layer, "_redo_history", None)
        return None if undo is None or redo is None else (len(undo), len(redo))

    def _on_set_data(self, event: Any = None) -> None:
        # napari emits no event for undo/redo, only ``set_data``, which also fires on every
        # slider move; recount only when the undo/redo stacks changed (or when they cannot be
        # seen in this napari version).
        lengths = self._history_lengths()
        if lengths is None or lengths != self._history:
            self._history = lengths
            self._schedule_recount()

    def _spacing(self) -> tuple[float, ...]:
        """Voxel spacing in mm from the stored grid (unit spacing for a non-medseg layer)."""
        assert self._layer is not None
        try:
            return meta_from_layer(self._layer.metadata, layer_name=self._layer.name).spacing
        except MedsegError:
            return tuple(abs(float(s)) for s in self._layer.scale)

    # -- rows -------------------------------------------------------------------------------
    def _label_values(self) -> list[int]:
        assert self._layer is not None
        present = np.unique(np.asarray(self._layer.data))
        named = stored_label_names(self._layer.metadata)
        return sorted({int(v) for v in present if v != 0} | set(named))

    def _is_instances(self) -> bool:
        return bool(self._layer is not None and self._layer.metadata.get(INSTANCES_KEY))

    def _rebuild_rows(self) -> None:
        self.rows.clear()
        if self._layer is None:
            self.total.value = ""
            return
        if self._is_instances():  # hundreds of object ids: the table lists them instead
            self.refresh_volumes()
            return
        names = stored_label_names(self._layer.metadata)
        for value in self._label_values():
            row = _LabelRow(value, names.get(value, f"label {value}"))
            row.shown.changed.connect(self._apply_colormap)
            row.opacity.changed.connect(self._apply_colormap)
            row.jump.changed.connect(lambda *_, v=value: self.jump_to(v))
            self.rows.append(row)
        self._apply_colormap()
        self.refresh_volumes()

    def _area_unit(self) -> str | None:
        """The unit of a 2D layer's areas (``px^2`` without a pixel size); ``None`` for 3D."""
        from medseg.inference.postprocess import area_unit

        assert self._layer is not None
        try:
            meta = meta_from_layer(self._layer.metadata, layer_name=self._layer.name)
        except MedsegError:
            return "px^2" if self._layer.ndim == 2 else None
        return area_unit(meta) if meta.ndim == 2 else None

    def refresh_volumes(self) -> dict[int, float]:
        """Recount every label's volume (mL; for a 2D layer its area, in px^2 unless the
        image has a pixel size) and, for a 2D layer, its objects table; returns
        ``{label: amount}``. A volume's lesion table (connected components and diameters of
        the whole volume: seconds on a large CT) is measured when the layer is chosen and on
        "Refresh lesion table", never on the GUI thread after every brush stroke."""
        if self._layer is None:
            return {}
        if self._layer.ndim == 2:
            self._refresh_measurements()
        if self._is_instances():
            self.total.value = ""
            return {}
        shown = [row.value for row in self.rows]
        data = np.asarray(self._layer.data)
        unit = self._area_unit()
        if unit is None:
            volumes = label_volumes_ml(data, self._spacing(), label_ids=shown)
        else:  # 2D: areas in the image's own unit (px^2 without a pixel size), never mL
            pixel = float(np.prod(self._spacing()))
            volumes = {k: c * pixel for k, c in label_counts(data, label_ids=shown).items()}
        if set(volumes) != set(shown):  # a new label value was painted
            self._rebuild_rows()
            return volumes
        for row in self.rows:
            row.volume.value = (f"{volumes[row.value]:.6g} {unit}" if unit
                                else f"{volumes[row.value]:.2f} mL")
        total = sum(volumes.values())
        self.total.value = f"total {total:.6g} {unit}" if unit else f"total {total:.2f} mL"
        return volumes

    def _refresh_measurements(self) -> None:
        """The objects (2D) or lesions (3D) table of the layer."""
        self._measurements = None
        if self._layer is not None:
            try:
                labels = labels_from_layer(self._layer.data, self._layer.metadata,
                                           layer_name=self._layer.name)
                self._measurements = layer_measurements(labels,
                                                        instances=self._is_instances())
            except MedsegError:  # not a medseg layer: no grid to measure on
                self._measurements = None
        m = self._measurements
        self.measures_title.value = m.title if m else ""
        self.measures.value = ({"data": m.rows, "index": list(range(1, len(m.rows) + 1)),
                                "columns": m.columns} if m and m.rows else None)
        self.item.max = max(1, len(m.rows) if m else 1)
        for w in (self.measures, self.item, self.item_go):
            w.visible = bool(m and m.rows)

    def jump_to_item(self, number: int) -> None:
        """Centre the view on object/lesion ``number`` (1-based row of the table)."""
        m, layer = self._measurements, self._layer
        if m is None or layer is None or not 1 <= number <= len(m.points):
            return
        self._centre_on(layer, m.points[number - 1])

    def _centre_on(self, layer: Labels, point: Any) -> None:
        """Move the sliders to ``point`` (the layer's data coordinates) and centre the camera
        on it."""
        world = np.asarray(layer.data_to_world(point), dtype=float)
        dims = self._viewer.dims
        offset = dims.ndim - layer.ndim
        for a in dims.not_displayed:
            if a >= offset:
                dims.set_point(a, world[a - offset])
        self._viewer.camera.center = tuple(world[a - offset] for a in dims.displayed)

    def _apply_colormap(self, *_: Any) -> None:
        if self._layer is None:
            return
        values = [row.value for row in self.rows]
        colors = label_colors_for(values, stored_label_colors(self._layer.metadata))
        hidden = {row.value for row in self.rows if not row.shown.value}
        opacity = {row.value: float(row.opacity.value) for row in self.rows}
        self._layer.colormap = label_colormap(colors, hidden=hidden, opacity=opacity)

    def _on_contour(self, value: int) -> None:
        if self._layer is not None:
            self._layer.contour = int(value)

    # -- actions ----------------------------------------------------------------------------
    def jump_to(self, value: int) -> None:
        """Move the slider to the slice with the most of ``value`` and centre the view on it."""
        layer = self._layer
        if layer is None:
            return
        dims = self._viewer.dims
        offset = dims.ndim - layer.ndim
        hidden_axes = [a - offset for a in dims.not_displayed if a >= offset]
        axis = hidden_axes[0] if hidden_axes else 0
        point = label_centroid(np.asarray(layer.data), value, axis=axis)
        if point is None:
            show_info(f"label {value} is not present in {layer.name!r}")
            return
        self._centre_on(layer, point)
        layer.selected_label = value

    def step_label(self, step: int) -> None:
        """Select the next (``step`` 1) or previous (-1) label of the layer, in value order
        and wrapping around, and jump to it (an instance layer steps through its objects)."""
        layer = self._layer
        if layer is None:
            return
        if self._is_instances():
            self.step_item(step)
            return
        values = self._label_values()
        if not values:
            return
        current = int(layer.selected_label)
        later = [v for v in values if (v - current) * step > 0]
        value = (min(later, key=lambda v: abs(v - current)) if later
                 else (values[0] if step > 0 else values[-1]))
        self.jump_to(value)

    def step_item(self, step: int) -> None:
        """Go to the next (``step`` 1) or previous (-1) row of the objects / lesions table,
        wrapping around."""
        m = self._measurements
        if m is None or not m.rows:
            return
        n = len(m.rows)
        self.item.value = (int(self.item.value) - 1 + step) % n + 1
        self.jump_to_item(self.item.value)

    def save(self, *_: Any) -> None:
        """Save the selected layer to the path in the file box (NIfTI, DICOM SEG or, for a 2D
        layer, a TIFF label image with the image's rows and columns)."""
        if self._layer is None:
            self.status.value = "no labels layer selected"
            return
        path = self.save_path.value
        if path is None or not str(path).strip() or Path(path) == Path(".") or Path(path).is_dir():
            self.status.value = ("choose a file to save to: .nii.gz (NIfTI), .dcm (DICOM SEG) "
                                 "or, for a 2D image, .tif")
            return
        target = Path(path).expanduser().resolve()
        own = self._layer.metadata.get(SAVE_PATH_KEY)
        if target.exists() and str(target) != own and self._overwrite_armed != target:
            self._overwrite_armed = target  # ask first: never write over another file silently
            self.status.value = (f"{target.name} already exists and was not saved from "
                                 f"{self._layer.name!r}: press Save again to overwrite it, or "
                                 "choose another file")
            return
        try:
            written = save_labels(target, self._layer.data, self._layer.metadata,
                                  layer_name=self._layer.name)
        except MedsegError as exc:
            self.status.value = f"not saved: {exc}"
            show_error(str(exc))
            return
        self._overwrite_armed = None
        self._layer.metadata[SAVE_PATH_KEY] = str(written.resolve())
        self.status.value = f"saved {written.name}"
        show_info(f"saved {self._layer.name!r} to {written}")

    # -- the learning loop --------------------------------------------------------------------
    def add_to_training_set(self, *_: Any) -> None:
        """Write the image and the selected (corrected) labels into the training folder: the
        layers are copied here, the files written in a worker (each atomically)."""
        if self._layer is None:
            self.status.value = "no labels layer selected"
            return
        folder = self.training_folder.value
        if folder is None or not str(folder).strip() or Path(folder) == Path("."):
            self.status.value = ("choose a training folder first (images/ and masks/ are "
                                 "made in it)")
            return
        if self._add_worker is not None:
            self.status.value = "still writing the previous correction..."
            return
        folder = Path(folder).expanduser().resolve()
        try:
            correction = capture_correction(
                self._layer, [ly for ly in self._viewer.layers if isinstance(ly, Image)])
        except MedsegError as exc:
            self.status.value = f"not added: {exc}"
            show_error(str(exc))
            return
        state = loop_state(self._viewer)
        state.training_folder = folder
        model = self._layer.metadata.get(MODEL_KEY)
        if model:
            state.base_model = str(model)
        self.status.value = f"adding {correction.stem} to {folder.name}/..."
        self._add_worker = create_worker(
            add_correction, folder, correction, _start_thread=False,
            _connect={"returned": self._on_added, "errored": self._on_add_error,
                      "finished": self._on_add_finished})
        self._add_worker.start()

    def _on_training_folder(self, value: Any) -> None:
        if value is not None and str(value).strip() and Path(value) != Path("."):
            loop_state(self._viewer).training_folder = Path(value).expanduser().resolve()

    def _on_added(self, line: str) -> None:
        loop_state(self._viewer).added += 1  # the Fine-tune and Correct next panels recount
        if not self._closed:
            self.status.value = line
            show_info(line)

    def _on_add_error(self, exc: BaseException) -> None:
        if self._closed:
            return
        if not isinstance(exc, MedsegError):
            logger.error("adding to the training set failed", exc_info=exc)
        self.status.value = f"not added: {exc}"
        show_error(f"not added to the training set: {exc}")

    def _on_add_finished(self) -> None:
        self._add_worker = None

    def _on_closed(self, *_: Any) -> None:
        self._closed = True
