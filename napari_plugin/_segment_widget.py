"""Segment widget: pick an image and a model, run it in a worker thread with progress and cancel.

The GUI thread only captures the request (:func:`napari_plugin._run.capture_request`) and adds
the result; loading the model and the sliding-window inference run in a superqt worker thread.
The engine's ``progress(done, total)`` callback is relayed to the progress bar through a Qt
signal (queued across threads), and *Cancel* sets an event the engine polls via
``should_cancel``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from superqt.utils import create_worker

from medseg.errors import CancelledError, MedsegError, ModelError
from medseg.inference.options import InferenceOptions
from napari_plugin._logic import AUTO_DEVICE, DEVICE_CHOICES, resolve_device
from napari_plugin._run import (
    EngineOptions,
    SegmenterCache,
    SegmentRequest,
    capture_request,
    fit_banner,
    model_card_summary,
    previous_results,
    result_layer_data,
    result_summary,
    run_request,
    uncertainty_layer_data,
)

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

#: Model-box entry meaning "use the checkpoint file chosen below".
CHECKPOINT_CHOICE = "checkpoint file..."
#: What a run does with an earlier result of the same model on the same image.
REPLACE = "replace this model's previous result"
RERUN_CHOICES = (REPLACE, "add a new layer")


class _ProgressRelay(QObject):
    """Carries ``progress(done, total)`` from the worker thread to the GUI thread."""

    progress = Signal(int, int)


def _preload_engine() -> None:
    import monai.networks.nets  # noqa: F401  (what the first run would import)

    import medseg.inference.engine  # noqa: F401  (torch)


def shipped_models() -> list[str]:
    """Names of the models that ship with medseg (empty if none are installed)."""
    from medseg.models import list_models

    return list(list_models())


def chosen_model(choice: str, checkpoint: str) -> str:
    """The model to load from the model box and the checkpoint field.

    Raises:
        ModelError: The checkpoint entry is chosen but no ``.safetensors`` file is given.
    """
    if choice != CHECKPOINT_CHOICE:
        return choice
    if not checkpoint or not checkpoint.endswith(".safetensors"):
        raise ModelError(f"choose a .safetensors model file (got {checkpoint or 'nothing'!r})")
    return checkpoint


class SegmentWidget(Container):
    """Run a medseg model on an image layer; the result is a labels layer tied to that image."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.image_box = create_widget(annotation=Image, label="image")
        self.model_box = ComboBox(label="model", choices=[*shipped_models(), CHECKPOINT_CHOICE])
        self.checkpoint = FileEdit(mode="r", filter="*.safetensors", label="checkpoint")
        self.device_box = ComboBox(label="device", choices=list(DEVICE_CHOICES), value=AUTO_DEVICE)
        self.overlap = FloatSpinBox(label="overlap", value=0.5, min=0.0, max=0.9, step=0.05)
        self.tta = CheckBox(text="test-time augmentation (mirroring)", value=False)
        self.uncertainty = CheckBox(text="uncertainty layer (where to look)", value=False)
        self.rerun = ComboBox(label="result", choices=list(RERUN_CHOICES), value=REPLACE)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # a long error wraps; the dock keeps its width
        self.model_info = Label(value="")  # the selected model's card, before a run
        self.fit_banner = Label(value="")  # the last result's fit report, after a run
        self.model_info.native.setWordWrap(True)
        self.fit_banner.native.setWordWrap(True)
        self.extend([
            self.image_box, self.model_box, self.checkpoint, self.model_info, self.device_box,
            self.overlap, self.tta, self.uncertainty, self.rerun, self.run_button,
            self.cancel_button,
            self.progress, self.status, self.fit_banner,
        ])
        self._cache = SegmenterCache()
        self._cancel_event = threading.Event()
        # parented to the widget, so it is deleted with it (not left to a dead dock)
        self._relay = _ProgressRelay(self.native)
        self._relay.progress.connect(self._on_progress)
        self._closed = False
        self.native.destroyed.connect(self._on_closed)
        self.worker: Any = None
        self.model_box.changed.connect(self._sync_checkpoint_visibility)
        self.model_box.changed.connect(self._show_model_card)
        self.checkpoint.changed.connect(self._show_model_card)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._sync_checkpoint_visibility()
        self._show_model_card()
        # torch and the engine take seconds to import: do it now, off the GUI thread, while
        # the user picks an image and a model, so the first Run starts at once
        self._preload = threading.Thread(target=_preload_engine, name="medseg-preload",
                                         daemon=True)
        self._preload.start()

    def _sync_checkpoint_visibility(self, *_: Any) -> None:
        self.checkpoint.visible = self.model_box.value == CHECKPOINT_CHOICE

    def _show_model_card(self, *_: Any) -> None:
        """Show what the selected model is for (read from its card; no weights loaded)."""
        from medseg.model_card import read_model_card
        from medseg.models import resolve_model

        try:
            model = chosen_model(str(self.model_box.value), str(self.checkpoint.value or ""))
            self.model_info.value = model_card_summary(read_model_card(resolve_model(model)))
        except (MedsegError, OSError) as exc:
            self.model_info.value = f"(no model card: {exc})"

    # -- run --------------------------------------------------------------------------------
    def _options(self) -> EngineOptions:
        model = chosen_model(str(self.model_box.value), str(self.checkpoint.value or ""))
        # torch is never imported on the GUI thread (seconds, the first time): once the worker
        # has loaded it, a CUDA request is checked here; before that the engine checks it
        torch = sys.modules.get("torch")
        device = resolve_device(str(self.device_box.value),
                                cuda_available=torch.cuda.is_available() if torch else None)
        inference = InferenceOptions(device=device, overlap=float(self.overlap.value),
                                     tta=bool(self.tta.value))
        return EngineOptions(model=model, inference=inference,
                             uncertainty=bool(self.uncertainty.value))

    def run(self, *_: Any) -> None:
        """Capture the selected image and start a worker (does nothing while one runs)."""
        if self.worker is not None:
            return
        layer = self.image_box.value
        if layer is None:
            self._fail("no image layer selected")
            return
        try:
            request = capture_request(layer, self._options())
        except MedsegError as exc:
            self._fail(str(exc))
            return
        self._cancel_event.clear()
        # superqt's worker, not napari's: napari's also relays every error (a cancel included)
        # to its notification manager as a traceback, while this widget reports errors itself.
        self.worker = create_worker(
            run_request, request, self._cache,
            progress=self._report_progress, should_cancel=self._cancel_event.is_set,
            _start_thread=False,
            _connect={
                "returned": lambda prediction: self._on_done(request, prediction),
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        self._set_running(True)
        self.status.value = f"segmenting {request.layer_name!r}..."
        self.worker.start()

    def cancel(self, *_: Any) -> None:
        """Ask the running engine to stop at its next window."""
        self._cancel_event.set()
        self.status.value = "cancelling..."

    def _report_progress(self, done: int, total: int) -> None:
        """The engine's progress callback (worker thread): relayed to the GUI thread, unless
        the widget has been closed meanwhile."""
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # deleted between the check and the emit
            self._relay.progress.emit(done, total)

    def _on_closed(self, *_: Any) -> None:
        """The widget (or its viewer) was closed: stop the run; its result is dropped."""
        self._closed = True
        self._cancel_event.set()

    # -- GUI-thread callbacks (each does nothing once the widget is closed) --------------------
    def _on_progress(self, done: int, total: int) -> None:
        if self._closed:
            return
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)

    def _on_done(self, request: SegmentRequest, prediction: Any) -> None:
        if self._closed:
            return
        try:
            data, kwargs, _ = result_layer_data(request, prediction)
        except MedsegError as exc:
            self._fail(str(exc))
            return
        layers = self._viewer.layers
        old = previous_results(layers, request) if self.rerun.value == REPLACE else []
        index = layers.index(old[0]) if old else None
        for layer in old:
            layers.remove(layer)
        new = self._viewer.add_labels(data, **kwargs)
        if index is not None:  # where the previous result was in the layer list
            layers.move(layers.index(new), index)
        extra = uncertainty_layer_data(request, prediction)
        if extra is not None:
            self._viewer.add_image(extra[0], **extra[1])
        self.status.value = f"done: {request.result_name}"
        text, level = fit_banner(prediction)
        self.fit_banner.value = text
        self.fit_banner.native.setStyleSheet(
            "background-color: #8a5a00; color: white; padding: 4px; font-weight: bold;"
            if level == "warn" else "")
        show_info(f"{request.result_name}: {result_summary(prediction)}")

    def _on_error(self, exc: BaseException) -> None:
        if self._closed:
            return
        if isinstance(exc, CancelledError):
            self.status.value = "cancelled"
            return
        message = str(exc) if isinstance(exc, MedsegError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, MedsegError):
            logger.error("segmentation failed", exc_info=exc)
        self._fail(message)

    def _on_finished(self) -> None:
        self.worker = None
        if not self._closed:
            self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if running:
            self.progress.value = 0

    def _fail(self, message: str) -> None:
        self.status.value = f"error: {message}"
        show_error(message)
