"""Run by test_segment_widget in a fresh interpreter (torch not yet imported): open a viewer
and the Segment widget, click Run once, and report as JSON which thread imported torch, the GUI
thread's longest gap between 10 ms timer ticks while the widget opens (and preloads the engine
in a thread) and while the run is going (from the click to the result's arrival), and how long
adding the result to the viewer then takes (GUI work, by design on the GUI thread).

Usage: python first_run_probe.py MODEL_FILE
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np


class _WhoImportsTorch:
    """A meta-path finder that only records the thread of the first ``import torch``."""

    thread: str | None = None

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and self.thread is None:
            type(self).thread = threading.current_thread().name
        return None


def _longest_gap_ms(ticks: list[float]) -> float | None:
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    return round(1000 * max(gaps), 1) if gaps else None


def main() -> None:
    sys.meta_path.insert(0, _WhoImportsTorch())
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_plugin._segment_widget import CHECKPOINT_CHOICE, SegmentWidget

    arrived: list[float] = []  # when the result reached the GUI thread, and when it was added
    add_result = SegmentWidget._on_done

    def timed_add(self, request, prediction) -> None:
        arrived.append(time.perf_counter())
        add_result(self, request, prediction)
        arrived.append(time.perf_counter())

    SegmentWidget._on_done = timed_add
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_box.value = CHECKPOINT_CHOICE
    widget.checkpoint.value = sys.argv[1]
    widget.device_box.value = "cpu"
    layer = viewer.add_image(np.random.default_rng(0).normal(size=(24, 24, 24)).astype("f4"))
    widget.image_box.value = layer
    while widget._preload.is_alive():  # the user picks an image and a model meanwhile
        app.processEvents()
        time.sleep(0.002)
    opening = _longest_gap_ms(ticks)
    ticks.clear()
    widget.run_button.clicked.emit()
    deadline = time.perf_counter() + 120
    while widget.worker is not None and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    print(json.dumps({"torch_thread": _WhoImportsTorch.thread,
                      "opening_max_gap_ms": opening,
                      "run_max_gap_ms": _longest_gap_ms([t for t in ticks if t <= arrived[0]]),
                      "adding_result_ms": round(1000 * (arrived[1] - arrived[0]), 1),
                      "status": widget.status.value}))
    viewer.close()


if __name__ == "__main__":
    main()
