"""Inference: the engine (:class:`Segmenter`), the windowed forward pass, the batch runner.

Examples::

    from medseg.inference import InferenceOptions, Segmenter
    from medseg.io import read_image

    options = InferenceOptions(tta=True, keep_largest=True)  # one typed set of settings
    segmenter = Segmenter.from_file("hippocampus", options)  # or a .safetensors file
    prediction = segmenter.predict(read_image("case.nii.gz"))
    prediction.labels, prediction.volumes_ml, prediction.timings
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medseg.devices import resolve_device
    from medseg.inference.engine import Prediction, Segmenter
    from medseg.inference.options import InferenceOptions
    from medseg.inference.postprocess import PostprocessConfig
    from medseg.inference.sliding_window import sliding_window_logits
    from medseg.inference.windows import WindowGrid, plan_windows

# Imported on first use (PEP 562): a GUI that only needs the options (napari's widgets) does
# not pay for torch on its GUI thread; the engine loads in the worker that runs it.
_WHERE = {
    "resolve_device": "medseg.devices",
    "Prediction": "medseg.inference.engine",
    "Segmenter": "medseg.inference.engine",
    "InferenceOptions": "medseg.inference.options",
    "PostprocessConfig": "medseg.inference.postprocess",
    "sliding_window_logits": "medseg.inference.sliding_window",
    "WindowGrid": "medseg.inference.windows",
    "plan_windows": "medseg.inference.windows",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'medseg.inference' has no attribute {name!r}")


__all__ = [
    "InferenceOptions",
    "PostprocessConfig",
    "Prediction",
    "Segmenter",
    "WindowGrid",
    "plan_windows",
    "resolve_device",
    "sliding_window_logits",
]
