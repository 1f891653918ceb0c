"""Segmentation metrics on label arrays (numpy in, floats out; MONAI/skimage do the hard parts)."""

from medseg.metrics.overlap import (
    adapted_rand_error,
    dice_per_label,
    hd95_per_label,
    pixel_error,
)

__all__ = ["adapted_rand_error", "dice_per_label", "hd95_per_label", "pixel_error"]
