"""Inference: the engine (:class:`Segmenter`), the windowed forward pass, the batch runner.

Examples::

    from medseg.inference import InferenceOptions, Segmenter
    from medseg.io import read_image

    options = InferenceOptions(tta=True, keep_largest=True)  # one typed set of settings
    segmenter = Segmenter.from_file("hippocampus", options)  # or a .safetensors file
    prediction = segmenter.predict(read_image("case.nii.gz"))
    prediction.labels, prediction.volumes_ml, prediction.timings
"""

from medseg.devices import resolve_device
from medseg.inference.engine import Prediction, Segmenter
from medseg.inference.options import InferenceOptions
from medseg.inference.postprocess import PostprocessConfig
from medseg.inference.sliding_window import sliding_window_logits
from medseg.inference.windows import WindowGrid, plan_windows

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
