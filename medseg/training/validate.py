"""Validation: sliding-window inference with mirror padding, then per-label Dice per case.

The windowed forward pass is :func:`medseg.inference.sliding_window_logits` (reflection padding,
Gaussian blending), so training validates exactly as the engine predicts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medseg.errors import ConfigError
from medseg.inference import sliding_window_logits
from medseg.inference.engine import unmirror
from medseg.metrics import dice_per_label
from medseg.training.dataset import PreparedCase

logger = logging.getLogger(__name__)


def predict_case_logits(model: torch.nn.Module, image: torch.Tensor, *, roi_size: Sequence[int],
                        overlap: float, device: torch.device, amp_dtype: torch.dtype | None,
                        tta: bool = False, label_offset: Sequence[float] = ()) -> torch.Tensor:
    """Logits ``(K, *S)`` of one image; with ``tta``, the mean logits over all mirrorings.

    How this differs from the engine's TTA (:meth:`medseg.inference.engine.Segmenter._forward`):
    both average logits over the 2^d mirrorings and undo ``label_offset`` the same way, but
    here the whole image is mirrored and then cut into windows (MONAI's grid, flush with the
    far border), whereas the engine mirrors each window of its own reflection-padded grid. So
    windows sit at mirrored places and labels near window seams can differ. Model selection
    uses this; reported figures come from the engine (``benchmarks/eval_*.py``).

    A volume given to a 2D model (``roi_size`` one axis shorter than the image) is predicted
    slice by slice along its last axis, as the engine does.

    ``label_offset`` (voxels per spatial axis, ``augment.label_offset``): each flipped-back
    prediction is moved by twice it along the flipped axes, as the inference engine does
    (:func:`medseg.inference.engine.unmirror`).
    """
    if image.dim() - 1 == len(roi_size) + 1:  # a 2D model over a volume: slice by slice
        return torch.stack([
            predict_case_logits(model, image[..., k], roi_size=roi_size, overlap=overlap,
                                device=device, amp_dtype=amp_dtype, tta=tta,
                                label_offset=label_offset)
            for k in range(image.shape[-1])], dim=-1)

    def run(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_logits(model, x, roi_size=list(roi_size), overlap=overlap,
                                     device=device, amp_dtype=amp_dtype)

    if not tta:
        return run(image)
    dims = image.dim() - 1
    if label_offset and len(label_offset) != dims:
        raise ConfigError(f"label_offset has {len(label_offset)} values for a {dims}D image")
    total = torch.zeros(0)
    flips = [[a + 1 for a in range(dims) if m >> a & 1] for m in range(2**dims)]
    for axes in flips:
        x = image.flip(axes) if axes else image
        out = unmirror(run(x), axes, label_offset, first_spatial=1)
        total = out if total.numel() == 0 else total + out
    return total / len(flips)


def validate(
    model: torch.nn.Module,
    cases: Sequence[PreparedCase],
    *,
    num_classes: int,
    roi_size: Sequence[int],
    overlap: float,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    tta: bool = False,
    label_offset: Sequence[float] = (),
    progress: Callable[[int, int], None] | None = None,
    instance_targets: str | None = None,
) -> dict[str, object]:
    """Per-case and mean per-label Dice on ``cases`` (``tta``, ``label_offset``: see
    :func:`predict_case_logits`). With ``instance_targets`` the labels hold instance ids and
    are scored against the classes the network learns from them.

    Returns:
        ``{"mean_dice": {label: float}, "mean": float, "per_case": {case_id: {label: float}}}``.
    """
    was_training = model.training
    model.eval()
    per_case: dict[str, dict[int, float]] = {}
    try:
        for i, case in enumerate(cases):
            logits = predict_case_logits(model, case.image, roi_size=roi_size, overlap=overlap,
                                         device=device, amp_dtype=amp_dtype, tta=tta,
                                         label_offset=label_offset)
            pred = logits.argmax(0).numpy()
            truth = case.label
            if instance_targets is not None:
                from medseg.training.instances import instance_targets as targets_of

                truth = targets_of(truth[None].long(), instance_targets)[0]
            per_case[case.case_id] = dice_per_label(pred, truth[0].numpy(),
                                                    range(1, num_classes))
            if progress is not None:
                progress(i + 1, len(cases))
    finally:
        model.train(was_training)
    labels = range(1, num_classes)
    mean = {c: float(np.mean([d[c] for d in per_case.values()])) for c in labels}
    return {"mean_dice": mean, "mean": float(np.mean(list(mean.values()))),
            "per_case": per_case}
