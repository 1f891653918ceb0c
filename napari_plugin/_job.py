"""One background job of a panel: a function run in a superqt worker thread, its progress
relayed to the GUI thread, a Cancel button setting an event the function polls, and nothing
delivered once the panel (or its viewer) is closed, which also cancels the job.

superqt's worker, not napari's: napari's also relays every error (a cancel included) to its
notification manager as a traceback, while the panels report errors themselves.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Label, PushButton
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal
from superqt.utils import create_worker

from medseg.errors import CancelledError, MedsegError

logger = logging.getLogger(__name__)


class _Relay(QObject):
    """Carries a progress value from the worker thread to the GUI thread (queued)."""

    progress = Signal(object)


class PanelJob:
    """Runs one function at a time for a panel.

    Args:
        owner: The panel's Qt widget (the relay is parented to it and dies with it).
        start_button: Disabled while the job runs.
        cancel_button: Enabled while the job runs; sets the cancel event.
        status: Where errors and "cancelled" are shown.
        on_progress: Called on the GUI thread with each value given to :meth:`report`.
        what: What the job does, for the log of an unexpected error.
    """

    def __init__(self, owner: Any, *, start_button: PushButton, cancel_button: PushButton,
                 status: Label, on_progress: Callable[[Any], None], what: str) -> None:
        self.start_button, self.cancel_button, self.status = start_button, cancel_button, status
        self.what = what
        self.worker: Any = None
        self.closed = False
        self.cancel_event = threading.Event()
        self._on_progress = on_progress
        self._relay = _Relay(owner)
        self._relay.progress.connect(self._deliver)
        owner.destroyed.connect(self._on_closed)
        cancel_button.enabled = False
        cancel_button.changed.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, function: Callable[..., Any], *args: Any,
              on_done: Callable[[Any], None], cancelled: str = "cancelled",
              **kwargs: Any) -> bool:
        """Run ``function(*args, **kwargs)`` in a worker; ``on_done(result)`` on the GUI
        thread. Returns ``False`` (and does nothing) while another run is going."""
        if self.worker is not None:
            return False
        self.cancel_event.clear()
        self._cancelled = cancelled
        self.worker = create_worker(
            function, *args, **kwargs, _start_thread=False,
            _connect={"returned": lambda result: None if self.closed else on_done(result),
                      "errored": self._on_error, "finished": self._on_finished})
        self.start_button.enabled, self.cancel_button.enabled = False, True
        self.worker.start()
        return True

    def cancel(self, *_: Any) -> None:
        """Ask the running function to stop (it polls :attr:`cancel_event`)."""
        self.cancel_event.set()
        if self.worker is not None and not self.closed:
            self.status.value = "cancelling..."

    def report(self, value: Any) -> None:
        """A progress value from the worker thread, shown unless the panel was closed."""
        if self.closed:
            return
        with contextlib.suppress(RuntimeError):  # deleted between the check and the emit
            self._relay.progress.emit(value)

    def fail(self, message: str) -> None:
        self.status.value = f"error: {message}"
        show_error(message)

    def _deliver(self, value: Any) -> None:
        if not self.closed:
            self._on_progress(value)

    def _on_closed(self, *_: Any) -> None:
        self.closed = True
        self.cancel_event.set()

    def _on_error(self, exc: BaseException) -> None:
        if self.closed:
            return
        if isinstance(exc, CancelledError):
            self.status.value = self._cancelled
            return
        if not isinstance(exc, MedsegError):
            logger.error("%s failed", self.what, exc_info=exc)
        self.fail(str(exc) if isinstance(exc, MedsegError) else f"{type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        if not self.closed:
            self.start_button.enabled, self.cancel_button.enabled = True, False
