"""Correct next: a folder's images ranked by the model's own confidence, least confident first,
as a list to step through; a click opens the image (and segments it), ready to be corrected
and added to the training set.

The ranking is :func:`medseg.inference.ranking.rank_images`, run in a superqt worker thread
with progress and Cancel (closing the panel cancels it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Image
from qtpy.QtWidgets import QListWidget

from medseg.errors import MedsegError
from napari_plugin._geometry import META_KEY
from napari_plugin._job import PanelJob
from napari_plugin._learn import loop_state, ranking_line, training_stems
from napari_plugin._segment_widget import CHECKPOINT_CHOICE, chosen_model, model_choices

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)


def rank_folder(model: str, folder: Path, *, progress: Any, should_cancel: Any) -> list[Any]:
    """Load the model and rank the folder's images (worker thread)."""
    from medseg.inference import Segmenter
    from medseg.inference.ranking import folder_cases, rank_images

    cases = folder_cases(folder)
    segmenter = Segmenter.from_file(model)
    return rank_images(cases, segmenter, progress=progress, should_cancel=should_cancel)


class NextImageWidget(Container):
    """Rank a folder's images by the model's confidence and open them one by one."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.model_box = ComboBox(label="model", choices=model_choices)
        self.checkpoint = FileEdit(mode="r", filter="*.safetensors", label="model file",
                                   visible=False)
        self.folder = FileEdit(mode="d", label="images folder")
        self.rank_button = PushButton(text="Rank: least confident first")
        self.rank_button.tooltip = ("segment every image of the folder and list them by the "
                                    "model's confidence in its result, least confident first: "
                                    "the ones a correction teaches most")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.segment_on_open = CheckBox(text="segment the image when opening it", value=True)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.list = QListWidget()
        self.list.setMinimumHeight(160)
        self.extend([self.model_box, self.checkpoint, self.folder, self.rank_button,
                     self.cancel_button, self.progress, self.segment_on_open, self.status])
        self.native.layout().addWidget(self.list)
        self.rows: list[Any] = []
        self._model: str | None = None
        self.job = PanelJob(self.native, start_button=self.rank_button,
                            cancel_button=self.cancel_button, status=self.status,
                            on_progress=self._on_progress, what="ranking")
        self.model_box.changed.connect(self._sync_checkpoint)
        self.rank_button.changed.connect(self.rank)
        self.list.itemActivated.connect(lambda item: self.open_row(self.list.row(item)))
        self.list.itemClicked.connect(lambda item: self.open_row(self.list.row(item)))
        state = loop_state(napari_viewer)
        if state.base_model and state.base_model in self.model_box.choices:
            self.model_box.value = state.base_model
        state.events.training_folder.connect(self._show_rows)
        state.events.added.connect(self._show_rows)
        self.native.destroyed.connect(lambda *_: (
            state.events.training_folder.disconnect(self._show_rows),
            state.events.added.disconnect(self._show_rows)))

    def _sync_checkpoint(self, *_: Any) -> None:
        self.checkpoint.visible = self.model_box.value == CHECKPOINT_CHOICE

    # -- rank ---------------------------------------------------------------------------------
    @property
    def worker(self) -> Any:
        """The running worker, ``None`` when idle."""
        return self.job.worker

    def rank(self, *_: Any) -> None:
        """Rank the folder's images in a worker (does nothing while one runs)."""
        if self.job.running:
            return
        try:
            model = chosen_model(str(self.model_box.value), str(self.checkpoint.value or ""))
        except MedsegError as exc:
            self.job.fail(str(exc))
            return
        folder = self.folder.value
        if folder is None or not str(folder).strip() or Path(folder) == Path("."):
            self.job.fail("choose the folder of images to rank")
            return
        self._model = model
        self.progress.value = 0
        self.status.value = f"segmenting the images of {Path(folder).name}/..."
        self.job.start(rank_folder, model, Path(folder).expanduser().resolve(),
                       progress=lambda done, total: self.job.report((done, total)),
                       should_cancel=self.job.cancel_event.is_set, on_done=self._on_ranked)

    def cancel(self, *_: Any) -> None:
        self.job.cancel()

    def _on_progress(self, value: tuple[int, int]) -> None:
        done, total = value
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)
        self.status.value = f"segmented {done} of {total} images..."

    def _on_ranked(self, rows: list[Any]) -> None:
        self.rows = list(rows)
        self._show_rows()
        scored = sum(r.score is not None for r in self.rows)
        self.status.value = (f"{scored} images ranked, least confident first"
                             + (f"; {len(self.rows) - scored} could not be segmented"
                                if scored < len(self.rows) else "")
                             + ". Click one to open it, correct it, then Add to training set.")

    def _show_rows(self, *_: Any) -> None:
        if self.job.closed:
            return
        folder = loop_state(self._viewer).training_folder
        added = training_stems(folder) if folder is not None else set()
        self.list.clear()
        for i, row in enumerate(self.rows):
            self.list.addItem(ranking_line(i + 1, row, added=added))

    # -- step through -------------------------------------------------------------------------
    def open_row(self, index: int) -> Any:
        """Open (or select, when open already) the image of row ``index`` and, if chosen,
        segment it with the ranking's model; returns its layer."""
        if not 0 <= index < len(self.rows):
            return None
        row = self.rows[index]
        layer = self._open_layer(row.case)
        if layer is None:
            return None
        self._viewer.layers.selection.active = layer
        self.list.setCurrentRow(index)
        if self.segment_on_open.value and row.score is not None and self._model:
            _, segment = self._viewer.window.add_plugin_dock_widget("medseg", "Segment")
            segment.model_box.reset_choices()
            if self._model in segment.model_box.choices:
                segment.model_box.value = self._model
            else:
                segment.model_box.value = CHECKPOINT_CHOICE
                segment.checkpoint.value = self._model
            segment.image_box.reset_choices()
            segment.image_box.value = layer
            segment.run()
        return layer

    def _open_layer(self, case: Any) -> Any:
        """The image layer of a ranked case: an open one read from its file, else opened."""
        target = str(Path(case.path).resolve())
        for layer in self._viewer.layers:
            stored = layer.metadata.get(META_KEY) if isinstance(layer, Image) else None
            path = ((stored or {}).get("provenance") or {}).get("path")
            if path and str(Path(path).resolve()) == target:
                return layer
        try:
            layers = self._viewer.open(str(case.path), plugin="medseg")
        except (MedsegError, OSError, ValueError) as exc:
            self.job.fail(f"{case.path} cannot be opened: {exc}")
            return None
        return layers[0] if layers else None
