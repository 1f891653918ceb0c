"""Validation: sliding-window inference with mirror padding, then per-label Dice per case.

Uses ``medseg.inference.sliding_window_logits`` when the inference layer provides it (so
training validates exactly like the engine predicts); until then MONAI's
``sliding_window_inference`` with Gaussian blending runs on an input mirror-padded here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medseg.metrics import dice_per_label
from medseg.training.dataset import PreparedCase
from medseg.training.patches import crop_reflect

logger = logging.getLogger(__name__)


def sliding_window_logits_fallback(
    model: torch.nn.Module,
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits ``(K, *S)`` for one image ``(C, *S)``: mirror-pad, Gaussian-blended windows, crop.

    Each side gets a quarter window of reflected context (overlap-tile), more where the image is
    smaller than the window.
    """
    from monai.inferers import sliding_window_inference

    shape = image.shape[1:]
    before = [max(r // 4, (r - s + 1) // 2) for s, r in zip(shape, roi_size, strict=True)]
    after = [max(r // 4, r - s - b) for s, r, b in zip(shape, roi_size, before, strict=True)]
    padded = crop_reflect(image, [-b for b in before],
                          [s + b + a for s, b, a in zip(shape, before, after, strict=True)])
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else \
        contextlib.nullcontext()
    with torch.no_grad(), autocast:
        logits = sliding_window_inference(
            padded[None].to(device), roi_size=list(roi_size), sw_batch_size=4,
            predictor=model, overlap=overlap, mode="gaussian",
        )[0].float()
    crop = tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))
    return logits[(slice(None), *crop)].cpu()


def predict_case_logits(model: torch.nn.Module, image: torch.Tensor, *, roi_size: Sequence[int],
                        overlap: float, device: torch.device, amp_dtype: torch.dtype | None,
                        tta: bool = False) -> torch.Tensor:
    """Logits of one image, optionally averaged over all mirrorings (test-time augmentation)."""
    try:
        from medseg.inference import sliding_window_logits  # type: ignore[attr-defined]
    except ImportError:
        sliding_window_logits = None

    def run(x: torch.Tensor) -> torch.Tensor:
        if sliding_window_logits is not None:
            return sliding_window_logits(model, x, roi_size=list(roi_size), overlap=overlap,
                                         device=device, amp_dtype=amp_dtype)
        return sliding_window_logits_fallback(model, x, roi_size=roi_size, overlap=overlap,
                                              device=device, amp_dtype=amp_dtype)

    if not tta:
        return run(image)
    dims = image.dim() - 1
    total = torch.zeros(0)
    flips = [[a + 1 for a in range(dims) if m >> a & 1] for m in range(2**dims)]
    for axes in flips:
        x = image.flip(axes) if axes else image
        out = run(x)
        out = out.flip(axes) if axes else out
        total = out.softmax(0) if total.numel() == 0 else total + out.softmax(0)
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
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, object]:
    """Per-case and mean per-label Dice on ``cases``.

    Returns:
        ``{"mean_dice": {label: float}, "mean": float, "per_case": {case_id: {label: float}}}``.
    """
    was_training = model.training
    model.eval()
    per_case: dict[str, dict[int, float]] = {}
    try:
        for i, case in enumerate(cases):
            logits = predict_case_logits(model, case.image, roi_size=roi_size, overlap=overlap,
                                         device=device, amp_dtype=amp_dtype, tta=tta)
            pred = logits.argmax(0).numpy()
            per_case[case.case_id] = dice_per_label(pred, case.label[0].numpy(),
                                                    range(1, num_classes))
            if progress is not None:
                progress(i + 1, len(cases))
    finally:
        model.train(was_training)
    labels = range(1, num_classes)
    mean = {c: float(np.mean([d[c] for d in per_case.values()])) for c in labels}
    return {"mean_dice": mean, "mean": float(np.mean(list(mean.values()))),
            "per_case": per_case}
