"""Segment widget: pick an image and a model, run it in a worker thread with progress and cancel.

The GUI thread only captures the request (:func:`napari_plugin._run.capture_request`) and adds
the result; loading the model and the sliding-window inference run in a superqt worker thread.
Torch and the engine are imported by a background thread while the widget opens; until it is
done, Run shows "Run (loading...)" and is disabled, and a run asked for meanwhile (a click that
got through, a script) waits for the import in its worker: the GUI thread never touches a
half-imported torch.
The engine's ``progress(done, total)`` callback is relayed to the progress bar through a Qt
signal (queued across threads), and *Cancel* sets an event the engine polls via
``should_cancel``.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from superqt.utils import create_worker

from medseg.errors import CancelledError, GeometryError, MedsegError, ModelError
from medseg.inference.options import InferenceOptions
from napari_plugin._geometry import to_layer_array
from napari_plugin._learn import FINETUNE_OFFER, plain_fit_banner
from napari_plugin._logic import AUTO_DEVICE, DEVICE_CHOICES, resolve_device
from napari_plugin._run import (
    EngineOptions,
    Relabel,
    SegmenterCache,
    SegmentRequest,
    box_from_shapes,
    capture_request,
    model_card_summary,
    previous_results,
    probability_layer_data,
    relabel,
    relabel_job,
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
#: Region-box entry meaning "segment the whole image"; the others name Shapes layers.
WHOLE_IMAGE = "whole image"


#: The Run button's text while the engine is imported.
LOADING_TEXT = "Run (loading...)"
#: How long the process waits at exit for a cancelled run to stop (ms).
EXIT_WAIT_MS = 30_000


class _ProgressRelay(QObject):
    """Carries ``progress(done, total)`` from the worker thread to the GUI thread, and the
    end of the engine's import from the preload thread."""

    progress = Signal(int, int)
    engine_ready = Signal()


def _preload_engine() -> bool | None:
    """Import what the first run needs (torch, MONAI, the engine); whether CUDA is available
    (``None``: the import failed, the run will say why)."""
    try:
        import monai.networks.nets  # noqa: F401  (what the first run would import)
        import torch

        import medseg.inference.engine  # noqa: F401

        return bool(torch.cuda.is_available())
    except Exception:  # reported by the run, which imports the same modules
        logger.debug("preloading the engine failed", exc_info=True)
        return None


def _wait_for_runs_at_exit() -> None:
    """At interpreter exit, let cancelled runs stop before Qt and Python are torn down: a
    worker thread that emits into a deleted Qt object aborts the process (PyQt6)."""
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is not None:
        QThreadPool.globalInstance().waitForDone(EXIT_WAIT_MS)


atexit.register(_wait_for_runs_at_exit)


def shipped_models() -> list[str]:
    """Names of the models that ship with medseg (empty if none are installed)."""
    from medseg.models import list_models

    return list(list_models())


def model_choices(*_: Any) -> list[str]:
    """The model box's entries: every model :func:`medseg.models.list_models` lists (shipped
    and fine-tuned), then the checkpoint-file entry."""
    return [*shipped_models(), CHECKPOINT_CHOICE]


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
        # choices re-read on every reset_choices: a model fine-tuned meanwhile appears
        self.model_box = ComboBox(label="model", choices=model_choices)
        self.checkpoint = FileEdit(mode="r", filter="*.safetensors", label="checkpoint")
        self.device_box = ComboBox(label="device", choices=list(DEVICE_CHOICES), value=AUTO_DEVICE)
        self.overlap = FloatSpinBox(label="overlap", value=0.5, min=0.0, max=0.9, step=0.05)
        self.tta = CheckBox(text="test-time augmentation (mirroring)", value=False)
        self.uncertainty = CheckBox(text="uncertainty layer (where to look)", value=False)
        # instance models trained in pixels: zoom the image to the size the model learned
        # (shown, with its tooltip, by _show_model_card for a model that records a diameter)
        self.diameter = FloatSpinBox(label="diameter (px)", value=0.0, min=0.0,
                                     max=1000.0, step=1.0, visible=False)
        # ... or estimated for each image from a first pass (a fine-tuned model's default)
        self.auto_diameter = CheckBox(text="estimate the diameter (auto)", value=False,
                                      visible=False)
        self.keep_probabilities = CheckBox(
            text="probability layer + threshold / min-size controls", value=False)
        # act on the last result with kept probabilities, without re-running the network
        self.threshold = FloatSlider(label="threshold", value=0.5, min=0.05, max=0.95,
                                     step=0.05, enabled=False)
        self.min_size = SpinBox(label="min size (voxels)", value=0, min=0, max=10_000_000,
                                enabled=False)
        self.threshold.tooltip = ("foreground probability a voxel needs (0.5 with two classes "
                                  "is the model's own choice); relabels the last result")
        self.min_size.tooltip = "objects smaller than this many voxels (pixels in 2D) are removed"
        self.rerun = ComboBox(label="result", choices=list(RERUN_CHOICES), value=REPLACE)
        # "segment inside a box": the rectangles of a Shapes layer limit the run (a model
        # trained on crops gets a crop; a large volume costs only its box)
        self.region = ComboBox(label="region", choices=self._region_choices,
                               value=WHOLE_IMAGE)
        self.region.tooltip = ("whole image, or the box drawn in a Shapes layer (a rectangle "
                               "drawn on one slice spans every slice)")
        # the compute guard refuses an image orders of magnitude larger than the model's
        # training images before the network runs; this runs it anyway
        self.force = CheckBox(text="force (run even far beyond the training images' size)",
                              value=False)
        self.force.tooltip = ("the compute guard refuses an image needing more than "
                              "MEDSEG_MAX_WORK (default 100) times the windows of the model's "
                              "largest training image (a box in 'region' is the better way "
                              "out); tick to run it anyway")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # a long error wraps; the dock keeps its width
        self.model_info = Label(value="")  # the selected model's card, before a run
        self.fit_banner = Label(value="")  # the last result's fit report, after a run
        self.model_info.native.setWordWrap(True)
        self.fit_banner.native.setWordWrap(True)
        # the way out when the image is another kind than the model's (plain_fit_banner)
        self.fine_tune_offer = PushButton(text=FINETUNE_OFFER, visible=False)
        self.fine_tune_offer.tooltip = ("open the Fine-tune panel and Review's Add to training "
                                        "set: correct a few results, add them, fine-tune")
        self.fine_tune_offer.changed.connect(self.offer_fine_tune)
        self.extend([
            self.image_box, self.model_box, self.checkpoint, self.model_info, self.device_box,
            self.overlap, self.tta, self.diameter, self.auto_diameter, self.uncertainty,
            self.keep_probabilities,
            self.region, self.force,
            self.rerun, self.run_button, self.cancel_button,
            self.progress, self.status, self.fit_banner, self.fine_tune_offer, self.threshold,
            self.min_size,
        ])
        self._cache = SegmenterCache()
        self._diameter_applies = False  # set by _show_model_card
        self._native_diameter: float | None = None
        self._cancel_event = threading.Event()
        # parented to the widget, so it is deleted with it (not left to a dead dock)
        self._relay = _ProgressRelay(self.native)
        self._relay.progress.connect(self._on_progress)
        self._closed = False
        self.native.destroyed.connect(self._on_closed)
        self.worker: Any = None
        self._kept: tuple[Any, Relabel] | None = None  # (result layer, its probabilities)
        self._relabel_worker: Any = None
        self._relabel_again = False
        self.threshold.changed.connect(self._relabel)
        self.min_size.changed.connect(self._relabel)
        self.model_box.changed.connect(self._sync_checkpoint_visibility)
        self.model_box.changed.connect(self._show_model_card)
        self.checkpoint.changed.connect(self._show_model_card)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._sync_checkpoint_visibility()
        self._show_model_card()
        # torch and the engine take seconds to import: do it now, off the GUI thread, while
        # the user picks an image and a model, so the first Run starts at once. Not a daemon:
        # a viewer closed mid-import lets the import end before the interpreter does.
        self._engine_ready = False
        self._cuda_available: bool | None = None  # known once the engine is imported
        self._relay.engine_ready.connect(self._on_engine_ready)
        self.run_button.text, self.run_button.enabled = LOADING_TEXT, False
        self.run_button.tooltip = "torch and the engine are loading (a few seconds, once)"
        self._preload = threading.Thread(target=self._preload_in_background,
                                         name="medseg-preload")
        self._preload.start()

    def _preload_in_background(self) -> None:
        """The preload thread: import the engine, then tell the GUI thread (unless the
        widget is gone)."""
        self._cuda_available = _preload_engine()
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # deleted between the check and the emit
            self._relay.engine_ready.emit()

    def _on_engine_ready(self) -> None:
        """GUI thread: the engine is imported; Run is enabled (unless a run is going)."""
        if self._closed:
            return
        self._engine_ready = True
        self.run_button.text, self.run_button.tooltip = "Run", ""
        self.run_button.enabled = self.worker is None

    def _sync_checkpoint_visibility(self, *_: Any) -> None:
        self.checkpoint.visible = self.model_box.value == CHECKPOINT_CHOICE

    def _show_model_card(self, *_: Any) -> None:
        """Show what the selected model is for (read from its card; no weights loaded)."""
        from medseg.model_card import read_model_card
        from medseg.models import resolve_model

        try:
            model = chosen_model(str(self.model_box.value), str(self.checkpoint.value or ""))
            card = read_model_card(resolve_model(model))
            self.model_info.value = model_card_summary(card)
            trained = card.object_diameter_px
            # kept apart from .visible, which Qt reports False while the dock is hidden
            self._diameter_applies = trained is not None
            self.diameter.visible = self.auto_diameter.visible = self._diameter_applies
            card_auto = (card.instances or {}).get("object_diameter") == "auto"
            # native pixels for a model whose card says "auto": its own diameter (no zoom)
            self._native_diameter = trained if card_auto else None
            self.auto_diameter.value = card_auto
            if self._diameter_applies:
                self.diameter.tooltip = (f"typical object diameter in this image's pixels "
                                         f"(the model learned {trained:.0f} px); the image is "
                                         "zoomed to that size, at most 2x either way. "
                                         "0: native pixels")
                self.auto_diameter.tooltip = (
                    "estimate each image's object diameter from a first pass and zoom by it "
                    "(on for a model fine-tuned at one object scale)")
        except (MedsegError, OSError) as exc:
            self.model_info.value = f"(no model card: {exc})"
            self._diameter_applies = self.diameter.visible = False
            self.auto_diameter.visible = False

    def offer_fine_tune(self, *_: Any) -> None:
        """Open the Fine-tune panel (set to this model) and Review's Add to training set."""
        from napari_plugin._finetune_widget import show_learning_panels

        try:
            model = chosen_model(str(self.model_box.value), str(self.checkpoint.value or ""))
        except ModelError:
            model = None
        show_learning_panels(self._viewer, base_model=model)

    def _region_choices(self, *_: Any) -> list[str]:
        """The region box's entries: the whole image, then every Shapes layer by name."""
        from napari.layers import Shapes

        return [WHOLE_IMAGE, *(ly.name for ly in self._viewer.layers if isinstance(ly, Shapes))]

    def _region(self, image_layer: Any, spatial_shape: tuple[int, ...]
                ) -> tuple[tuple[int, int], ...] | None:
        """The box chosen in the region entry, in the image's voxel indices (``None``: all)."""
        choice = self.region.value
        if choice in (None, WHOLE_IMAGE):
            return None
        if choice not in self._viewer.layers:
            raise GeometryError(f"shapes layer {choice!r} is gone: choose another region")
        return box_from_shapes(self._viewer.layers[choice], image_layer, spatial_shape)

    # -- run --------------------------------------------------------------------------------
    def _options(self) -> EngineOptions:
        model = chosen_model(str(self.model_box.value), str(self.checkpoint.value or ""))
        # torch is never touched on the GUI thread (it may be half imported by the preload
        # thread): once the preload has imported it, a CUDA request is checked here; before
        # that the engine checks it
        device = resolve_device(str(self.device_box.value),
                                cuda_available=self._cuda_available)
        diameter: float | str | None = None
        if self._diameter_applies:
            given = float(self.diameter.value)
            # unticked, 0: native pixels, also for a model whose card says "auto"
            diameter = ("auto" if self.auto_diameter.value else given if given > 0
                        else self._native_diameter)
        inference = InferenceOptions(device=device, overlap=float(self.overlap.value),
                                     tta=bool(self.tta.value),
                                     object_diameter=diameter,
                                     force=bool(self.force.value))
        return EngineOptions(model=model, inference=inference,
                             uncertainty=bool(self.uncertainty.value),
                             probabilities=bool(self.keep_probabilities.value))

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
            region = self._region(layer, request.image.spatial_shape)
            if region is not None:
                request = dataclasses.replace(request, region=region)
        except MedsegError as exc:
            self._fail(str(exc))
            return
        self._cancel_event.clear()
        # superqt's worker, not napari's: napari's also relays every error (a cancel included)
        # to its notification manager as a traceback, while this widget reports errors itself.
        self.worker = create_worker(
            self._run_when_loaded, request,
            progress=self._report_progress, should_cancel=self._cancel_event.is_set,
            _start_thread=False,
            _connect={
                "returned": lambda prediction: self._on_done(request, prediction),
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        self._set_running(True)
        self.status.value = (f"segmenting {request.layer_name!r}..." if self._engine_ready else
                             f"loading the engine, then segmenting {request.layer_name!r}...")
        self.worker.start()

    def _run_when_loaded(self, request: SegmentRequest, *, progress: Any,
                         should_cancel: Any) -> Any:
        """The worker: wait for the engine's import (a run asked for while it loads), then
        run the request."""
        self._preload.join()
        if should_cancel():
            raise CancelledError("prediction cancelled")
        return run_request(request, self._cache, progress=progress,
                           should_cancel=should_cancel)

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
        for extra in (probability_layer_data(request, prediction),
                      uncertainty_layer_data(request, prediction)):
            if extra is not None:
                self._viewer.add_image(extra[0], **extra[1])
        job = relabel_job(request, prediction)
        self._kept = (new, job) if job is not None else None
        for control in (self.threshold, self.min_size):
            control.enabled = job is not None
        if job is not None:  # the controls start from the result as it is
            with self.threshold.changed.blocked(), self.min_size.changed.blocked():
                self.threshold.value, self.min_size.value = job.threshold, 0
        self.status.value = f"done: {request.result_name}"
        banner = plain_fit_banner(prediction)
        self.fit_banner.value = banner.text
        self.fit_banner.tooltip = banner.detail  # the figures behind the words
        self.fine_tune_offer.visible = banner.offer_finetune
        self.fit_banner.native.setStyleSheet(
            "background-color: #8a5a00; color: white; padding: 4px; font-weight: bold;"
            if banner.level == "warn" else "")
        show_info(f"{request.result_name}: {result_summary(prediction)}")

    # -- threshold / minimum size: relabel the kept result in a worker ------------------------
    def _relabel(self, *_: Any) -> None:
        """Relabel the last kept result at the controls' values (a worker; a change made
        while one runs is applied when it finishes)."""
        if self._kept is None or self._closed:
            return
        if self._relabel_worker is not None:
            self._relabel_again = True
            return
        layer, base = self._kept
        job = dataclasses.replace(base, threshold=float(self.threshold.value),
                                  min_voxels=int(self.min_size.value))
        self._relabel_again = False
        self._relabel_worker = create_worker(
            relabel, job, _start_thread=False,
            _connect={"returned": lambda labels: self._on_relabelled(layer, labels),
                      "errored": self._on_error,
                      "finished": self._on_relabel_finished})
        self.status.value = (f"relabelling {layer.name!r}: threshold {job.threshold:.2f}, "
                             f"min size {job.min_voxels} voxels...")
        self._relabel_worker.start()

    def _on_relabelled(self, layer: Any, labels: Any) -> None:
        if self._closed or layer not in self._viewer.layers:
            return
        layer.data = to_layer_array(labels)
        self.status.value = (f"{layer.name}: threshold {self.threshold.value:.2f}, min size "
                             f"{self.min_size.value} voxels"
                             + (f", {int(labels.max())} objects" if self._kept
                                and self._kept[1].instances else ""))

    def _on_relabel_finished(self) -> None:
        self._relabel_worker = None
        if self._relabel_again and not self._closed:
            self._relabel()

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
        self.run_button.enabled = not running and self._engine_ready
        self.cancel_button.enabled = running
        if running:
            self.progress.value = 0

    def _fail(self, message: str) -> None:
        self.status.value = f"error: {message}"
        show_error(message)
