"""Screenshots of the napari plugin on real data, one per kind of result medseg ships:

* ``structure``: the ``hippocampus`` model on a real MR DICOM series (HippoCrop, Study1);
* ``tumour``: the ``brain-flair-tumour`` model (2D, slice by slice) on the glioblastoma FLAIR
  DICOM series;
* ``cells``: the ``nuclei`` instance model on a DSB2018 fluorescence image shipped as sample data.

Each is made the way a user makes it: the image opened with the medseg reader, the Segment
widget run on it (in its worker thread), the Review widget bound to the result, the view moved
to the largest lesion / object table's first row; then ``viewer.screenshot``. Run under a
virtual display (Qt's offscreen platform renders the canvas black)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_results.py
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from screenshot_napari import use_throwaway_settings  # scripts/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "docs" / "images"
SAMPLES = REPO / "medseg" / "samples" / "nuclei"

#: name -> (input, model, zoom)
SCENARIOS = {
    "structure": (DATA / "hippocrop_dicom" / "Study1" / "13_HCropVolume", "hippocampus", 8.0),
    "tumour": (DATA / "gbm_flair_dicom" / "FLAIR_37623", "brain-flair-tumour", 2.6),
    "cells": (SAMPLES / "4c465a54e329ec7b0f4bc5f6acdfd3192707d6c0fbdf557339485581c5a6b3c1.png",
              "nuclei", 2.2),
}


def shoot(name: str, out: Path, *, size: tuple[int, int], timeout_s: float = 600.0) -> str:
    """Open, segment, review and screenshot one scenario; returns a one-line summary."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_plugin._review_widget import ReviewWidget
    from napari_plugin._segment_widget import SegmentWidget

    path, model, zoom = SCENARIOS[name]
    viewer = napari.Viewer(title=f"medseg - {name}", show=True)
    viewer.window.resize(*size)
    layers = viewer.open(str(path), plugin="medseg")
    image = layers[0]
    segment = SegmentWidget(viewer)
    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(segment, name="medseg: segment", area="right")
    viewer.window.add_dock_widget(review, name="medseg: review labels", area="right")
    segment.image_box.value = image
    segment.model_box.value = model
    segment.device_box.value = "cpu"
    segment.run_button.clicked.emit()
    start = time.monotonic()
    while segment.worker is not None:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{name}: the run did not finish in {timeout_s:.0f} s")
    if not segment.status.value.startswith("done"):
        raise RuntimeError(f"{name}: {segment.status.value}")
    result = review.layer_box.value
    result.opacity = 0.5
    if result.ndim == 3:
        review.step_item(0)  # the lesion table's first row: the largest lesion
        review.jump_to_item(1)
    viewer.window.resize(*size)
    if result.ndim == 2:
        viewer.reset_view()
    getattr(viewer, "scene", viewer).camera.zoom = zoom  # napari >= 0.9: viewer.scene.camera
    for _ in range(30):  # let Qt lay out the docks and vispy draw the canvas
        QApplication.processEvents()
    picture = viewer.screenshot(str(out), canvas_only=False, flash=False)
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    summary = (f"{name}: {model} on {path.name}: {segment.status.value}; "
               f"{review.measures_title.value or review.total.value}; "
               f"{picture.shape[1]}x{picture.shape[0]} px -> {shown}")
    if float(picture[..., :3].std()) < 5.0:
        raise RuntimeError(f"{name}: the screenshot is nearly uniform (black canvas?): run "
                           "under xvfb-run")
    viewer.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=OUT, help="folder for napari_<name>.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1800, 1000), help="window w h")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    use_throwaway_settings()
    from napari.settings import get_settings

    # a throw-away settings file; only errors as toasts (a deprecation notice would sit over
    # the image)
    get_settings().application.gui_notification_level = "error"
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        print(shoot(name, args.out / f"napari_{name}.png", size=tuple(args.size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
