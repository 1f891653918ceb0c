"""Fine-tune panel: a base model, the training folder, the minutes; Start and Cancel.

:func:`medseg.training.finetune.finetune` (the call behind ``medseg-train --from-model``) runs
in a superqt worker thread; its progress callback is relayed to the GUI thread through a Qt
signal, and *Cancel* (or closing the panel or the viewer) sets an event it polls. When it ends
the panel shows the before/after figures, the new model appears in the Segment widget's list,
and *Segment the current image with it* runs it in one click. The text shown comes from
:mod:`napari_plugin._learn`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)
from napari.layers import Image
from napari.utils.notifications import show_info

from medseg.errors import MedsegError, ModelError
from napari_plugin._job import PanelJob
from napari_plugin._learn import (
    loop_state,
    model_name,
    progress_fraction,
    progress_text,
    result_text,
    training_folder_summary,
)
from napari_plugin._segment_widget import CHECKPOINT_CHOICE, chosen_model, model_choices

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

PLUGIN = "medseg"
PANEL = "Fine-tune"
#: The progress bar's resolution (it counts time, not steps: the budget is in minutes).
PROGRESS_STEPS = 1000


def show_learning_panels(viewer: napari.Viewer, *, base_model: str | None = None) -> Any:
    """Open (or bring forward) the Fine-tune panel and the Review widget, whose *Add to
    training set* fills the folder the panel learns from; returns the Fine-tune panel."""
    _, review = viewer.window.add_plugin_dock_widget(PLUGIN, "Review labels")
    dock, panel = viewer.window.add_plugin_dock_widget(PLUGIN, PANEL)
    if base_model:
        loop_state(viewer).base_model = base_model
        panel.set_base_model(base_model)
    dock.show()
    dock.raise_()
    review.add_button.native.setFocus()
    return panel


def training_threads(cores: int | None) -> int:
    """Threads for training beside the viewer: every core but one, which stays with the GUI
    (torch on every core of a busy machine ran a tiny fine-tune at 13 steps in 14 s instead of
    179 with one thread, 2-core AMD EPYC).

    Examples:
        >>> training_threads(2), training_threads(16), training_threads(None)
        (1, 15, 1)
    """
    return max(1, (cores or 1) - 1)


def run_finetune(options: Any, *, progress: Any, cancel: Any) -> Any:
    """The worker's call (kept apart so the panel never imports torch on the GUI thread;
    :func:`~medseg.training.finetune.finetune` gives the thread count back afterwards, so the
    pool thread's next Segment job runs as before)."""
    from medseg.training.finetune import finetune

    return finetune(options, progress=progress, cancel=cancel)


class FineTuneWidget(Container):
    """Fine-tune a model on the training folder in a worker, with progress, ETA and Cancel."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        state = loop_state(napari_viewer)
        self.base_box = ComboBox(label="base model", choices=model_choices)
        self.checkpoint = FileEdit(mode="r", filter="*.safetensors", label="model file",
                                   visible=False)
        self.folder = FileEdit(mode="d", label="training folder")
        self.folder.tooltip = ("images/ and masks/ with matching names (Review's Add to "
                               "training set fills it)")
        self.folder_info = Label(value="")
        self.minutes = FloatSpinBox(label="minutes", value=10.0, min=0.05, max=600.0, step=1.0)
        self.minutes.tooltip = "time budget of the training (the scoring before and after adds "\
                               "a little)"
        self.name = LineEdit(label="new model name", value="")
        self.name.tooltip = "empty: named after the base model and the date"
        self.start_button = PushButton(text="Start")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_STEPS, label="progress")
        self.status = Label(value="")
        self.result = Label(value="")
        self.use_button = PushButton(text="Segment the current image with it", visible=False)
        for label in (self.status, self.result, self.folder_info):
            label.native.setWordWrap(True)
        self.extend([self.base_box, self.checkpoint, self.folder, self.folder_info,
                     self.minutes, self.name, self.start_button, self.cancel_button,
                     self.progress, self.status, self.result, self.use_button])
        self.last_result: Any = None
        # closing the panel (or the viewer) cancels the training: nothing is exported
        self.job = PanelJob(self.native, start_button=self.start_button,
                            cancel_button=self.cancel_button, status=self.status,
                            on_progress=self._on_progress, what="fine-tuning")
        self.base_box.changed.connect(self._sync_checkpoint)
        self.folder.changed.connect(self._on_folder)
        self.start_button.changed.connect(self.start)
        self.use_button.changed.connect(self.segment_current_image)
        if state.base_model:
            self.set_base_model(state.base_model)
        if state.training_folder is not None:
            self.folder.value = state.training_folder
        state.events.training_folder.connect(self._on_state_folder)
        state.events.added.connect(self._on_folder)
        self.native.destroyed.connect(lambda *_: (
            state.events.training_folder.disconnect(self._on_state_folder),
            state.events.added.disconnect(self._on_folder)))
        self._on_folder()

    # -- fields -------------------------------------------------------------------------------
    def set_base_model(self, model: str) -> None:
        """Select ``model`` (a listed name, else a model file) as the base."""
        self.base_box.reset_choices()
        if model in self.base_box.choices:
            self.base_box.value = model
        else:
            self.base_box.value = CHECKPOINT_CHOICE
            self.checkpoint.value = model
        self._sync_checkpoint()

    def _sync_checkpoint(self, *_: Any) -> None:
        self.checkpoint.visible = self.base_box.value == CHECKPOINT_CHOICE

    def _folder_path(self) -> Path | None:
        value = self.folder.value
        if value is None or not str(value).strip() or Path(value) == Path("."):
            return None
        return Path(value).expanduser().resolve()

    def _on_folder(self, *_: Any) -> None:
        if self.job.closed:
            return
        folder = self._folder_path()
        self.folder_info.value = "" if folder is None else training_folder_summary(folder)

    def _on_state_folder(self, folder: Path | None) -> None:
        """Review added a correction (or chose a folder): follow it, and recount."""
        if self.job.closed or folder is None:
            return
        if self._folder_path() != folder:
            self.folder.value = folder
        self._on_folder()

    # -- run ----------------------------------------------------------------------------------
    def options(self) -> Any:
        """The ``FinetuneOptions`` of the fields.

        Raises:
            ModelError: No base model file chosen, or no training folder.
        """
        from medseg.training.finetune import FinetuneOptions

        base = chosen_model(str(self.base_box.value), str(self.checkpoint.value or ""))
        folder = self._folder_path()
        if folder is None:
            raise ModelError("choose the training folder (images/ and masks/; Review's Add "
                             "to training set fills it)")
        name = str(self.name.value).strip() or None
        return FinetuneOptions(base=base, data=folder, minutes=float(self.minutes.value),
                               name=name, num_threads=training_threads(os.cpu_count()))

    @property
    def worker(self) -> Any:
        """The running worker, ``None`` when idle."""
        return self.job.worker

    def start(self, *_: Any) -> None:
        """Start fine-tuning in a worker (does nothing while one runs)."""
        if self.job.running:
            return
        try:
            options = self.options()
        except MedsegError as exc:
            self.job.fail(str(exc))
            return
        self.last_result = None
        self.result.value = ""
        self.use_button.visible = False
        self.progress.value = 0
        self.status.value = (f"fine-tuning {model_name(options.base)} on "
                             f"{training_folder_summary(options.data)} for "
                             f"{options.minutes:g} min...")
        self.job.start(run_finetune, options, progress=self.job.report,
                       cancel=self.job.cancel_event.is_set, on_done=self._on_done,
                       cancelled="cancelled: no model was saved")

    def cancel(self, *_: Any) -> None:
        """Ask the training to stop at its next step."""
        self.job.cancel()

    def _on_progress(self, progress: Any) -> None:
        self.progress.value = round(PROGRESS_STEPS * progress_fraction(progress))
        self.status.value = progress_text(progress)

    def _on_done(self, result: Any) -> None:
        self.last_result = result
        self.progress.value = PROGRESS_STEPS
        self.status.value = "done"
        self.result.value = result_text(result)
        self.use_button.visible = True
        self.use_button.text = (f"Segment the current image with {model_name(result.model_path)}"
                                + (" (candidate)" if result.candidate else ""))
        self._refresh_model_lists()
        show_info(result_text(result).replace("\n", " "))

    # -- after a run --------------------------------------------------------------------------
    def _segment_widget(self) -> Any:
        _, widget = self._viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
        return widget

    def _refresh_model_lists(self) -> None:
        """The new model in this panel's and the Segment widget's lists."""
        self.base_box.reset_choices()
        self._segment_widget().model_box.reset_choices()

    def segment_current_image(self, *_: Any) -> None:
        """Run the last fine-tuned model on the selected image layer (or the Segment widget's
        image) through the Segment widget: one click."""
        if self.last_result is None:
            return
        segment = self._segment_widget()
        segment.model_box.reset_choices()
        name = model_name(self.last_result.model_path)
        if name in segment.model_box.choices:
            segment.model_box.value = name
        else:  # a candidate outside the list: by its file
            segment.model_box.value = CHECKPOINT_CHOICE
            segment.checkpoint.value = self.last_result.model_path
        active = self._viewer.layers.selection.active
        if isinstance(active, Image):
            segment.image_box.value = active
        segment.run()
