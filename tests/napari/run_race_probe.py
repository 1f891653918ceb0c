"""Run by test_run_race in a fresh interpreter (torch not yet imported): the Segment widget
while its background thread imports torch and the engine.

Modes (the last line printed is a JSON report):

* ``run-at-once MODEL``: open the widget, pick ``MODEL``, click Run at once, while the import
  is held half-way (``torch.cuda`` held 2 s); wait for the result.
* ``close-during-import``: open the widget and close the viewer while the import is held,
  then end the script.
* ``close-mid-run MODEL``: open the widget, pick ``MODEL``, click Run at once (no hold), close
  the viewer once the first windows have run, then end the script.

Usage: python run_race_probe.py MODE [MODEL]
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

HOLD_S = 2.0


class _HoldTorchCuda:
    """A meta-path finder that holds the preload thread's import of ``torch.cuda``, so that
    ``torch`` sits half-initialised in ``sys.modules`` when Run is clicked."""

    held = False

    def find_spec(self, name, path=None, target=None):
        if name == "torch.cuda" and threading.current_thread().name == "medseg-preload":
            type(self).held = True
            time.sleep(HOLD_S)
        return None


def _open(model: str | None, shape: tuple[int, ...]):
    import napari

    from napari_plugin._segment_widget import SegmentWidget

    viewer = napari.Viewer(show=True)
    layer = viewer.add_image(np.random.default_rng(0).normal(size=shape).astype(np.float32),
                             scale=(2.5, 2.5, 2.5), name="scan")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    if model:
        widget.model_box.value = model
    widget.device_box.value = "cpu"
    widget.image_box.value = layer
    return viewer, widget


def _spin(app, until, timeout_s: float) -> bool:
    deadline = time.perf_counter() + timeout_s
    while not until() and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.005)
    return until()


def main() -> None:
    mode = sys.argv[1]
    model = sys.argv[2] if len(sys.argv) > 2 else None
    if mode in ("run-at-once", "close-during-import"):
        sys.meta_path.insert(0, _HoldTorchCuda())
    from qtpy.QtWidgets import QApplication

    # mid-run: a 2.5 mm volume of about the size the demo model was trained on (dozens of
    # windows); otherwise a small one (a few)
    viewer, widget = _open(model, (64, 164, 164) if mode == "close-mid-run" else (24, 80, 80))
    app = QApplication.instance()
    report: dict = {"mode": mode}
    if mode == "close-during-import":
        _spin(app, lambda: _HoldTorchCuda.held, 60)
        report["closed_while_importing"] = widget._preload.is_alive()
        viewer.close()
        print(json.dumps(report), flush=True)
        return  # the interpreter ends while the import finishes
    if mode == "run-at-once":
        _spin(app, lambda: _HoldTorchCuda.held, 60)
        report.update(torch_half_imported=("torch" in sys.modules
                                           and "torch.cuda" not in sys.modules),
                      button_text=widget.run_button.text,
                      button_enabled=widget.run_button.enabled)
    widget.run_button.clicked.emit()  # a click that gets through (a script, a shortcut)
    report["status_after_click"] = widget.status.value
    if mode == "close-mid-run":
        progress: list[int] = []
        widget._relay.progress.connect(lambda done, total: progress.append(done))
        report["started"] = _spin(app, lambda: bool(progress), 300)
        report["windows_at_close"] = (progress[-1] if progress else 0, widget.progress.max)
        viewer.close()
        print(json.dumps(report), flush=True)
        return  # the interpreter ends while the cancelled run stops
    _spin(app, lambda: widget.worker is None and widget._engine_ready, 300)
    report.update(final_status=widget.status.value, final_button=widget.run_button.text,
                  final_enabled=widget.run_button.enabled)
    viewer.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
