"""Screenshot of the medseg napari plugin on a real CT DICOM series with an organ overlay.

The CT is TotalSegmentator's 20-slice example series (``totalseg_ct/example_ct_dicom``, opened
with the medseg reader). No CT model ships with medseg, so the overlay is TotalSegmentator's own
reference mask ``example_seg_dicom.nii.gz`` (a model output, not manual truth), which is stored
on a y-flipped grid: it is resampled onto the series' grid in physical space with
``medseg.transforms.resample_onto`` (nearest neighbour), then shown as a medseg labels layer
with its organ names, reviewed with the plugin's review widget (view centred on the liver).

Run under a virtual display (Qt's offscreen platform renders the canvas black)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_napari.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "totalseg_ct"
DEFAULT_OUT = REPO / "docs" / "images" / "napari_overlay.png"
LIVER = 5
CT_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window (HU)


def build_viewer(data: Path, *, size: tuple[int, int]):
    """A viewer with the CT series, the resampled reference mask and the review widget."""
    import napari
    from napari.settings import get_settings

    from medseg.io import read_image
    from medseg.transforms import resample_onto
    from napari_plugin._geometry import meta_from_layer
    from napari_plugin._layers import labels_layer_data
    from napari_plugin._review_widget import ReviewWidget

    # main() points NAPARI_CONFIG at a throw-away file, so this never touches the user's settings.
    # Only errors as toasts: an info or warning notice would sit over the image.
    get_settings().application.gui_notification_level = "error"
    viewer = napari.Viewer(title="medseg - review", show=True)
    viewer.window.resize(*size)
    (ct_layer,) = viewer.open(str(data / "example_ct_dicom"), plugin="medseg")
    ct_layer.contrast_limits = CT_WINDOW
    ct_meta = meta_from_layer(ct_layer.metadata, layer_name=ct_layer.name)
    ct_shape = tuple(ct_layer.data.shape[::-1])

    mask = read_image(data / "example_seg_dicom.nii.gz")
    on_ct = resample_onto(mask, ct_meta, ct_shape, order=0)
    names = {int(k): v for k, v in json.loads((data / "labels_total.json").read_text()).items()}
    present = {int(v) for v in np.unique(on_ct.array) if v != 0}
    layer_data, kwargs, _ = labels_layer_data(
        on_ct,
        name="TotalSegmentator reference [resampled by medseg]",
        label_names={v: names.get(v, f"label {v}") for v in sorted(present)},
        source_layer=ct_layer.name,
    )
    labels_layer = viewer.add_labels(layer_data, **kwargs)
    labels_layer.opacity = 0.55

    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(review, name="medseg: review labels", area="right")
    review.layer_box.value = labels_layer
    review.jump_to(LIVER)
    viewer.window.resize(*size)
    viewer.reset_view()
    return viewer, labels_layer


def use_throwaway_settings() -> None:
    """Point napari at a new, empty settings file (before napari is imported), so a user's own
    settings neither change the picture nor get changed by it."""
    settings_dir = tempfile.mkdtemp(prefix="medseg-napari-settings-")
    os.environ["NAPARI_CONFIG"] = os.path.join(settings_dir, "settings.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="totalseg_ct folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 900), help="window w h")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    use_throwaway_settings()

    import napari
    from qtpy.QtWidgets import QApplication

    viewer, labels_layer = build_viewer(args.data, size=tuple(args.size))
    for _ in range(20):  # let Qt lay out the dock widget and vispy draw the canvas
        QApplication.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = viewer.screenshot(str(args.out), canvas_only=False, flash=False)
    slice_k = int(round(labels_layer.world_to_data(viewer.dims.point)[0]))
    logging.info("wrote %s (%d x %d px), CT slice k=%d", args.out, image.shape[1], image.shape[0],
                 slice_k)
    if float(image[..., :3].std()) < 5.0:
        logging.error("the screenshot is nearly uniform (black canvas?): run under xvfb-run")
        return 1
    viewer.close()
    napari.Viewer.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
