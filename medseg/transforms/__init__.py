"""Array/geometry transforms shared by training and inference (no training/inference imports)."""

from medseg.transforms.intensity import normalize_intensity
from medseg.transforms.resample import (
    resample_onto,
    resample_to_spacing,
    resampled_shape,
    spacing_matches,
)

__all__ = ["normalize_intensity", "resample_onto", "resample_to_spacing", "resampled_shape",
           "spacing_matches"]
