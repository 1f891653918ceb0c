"""Segmentation metrics on label arrays (numpy in, floats out; MONAI/skimage do the hard parts)."""

from medseg.metrics.evaluate import (
    CaseScores,
    evaluate_folders,
    score_case,
    scores_to_csv,
    summarize,
)
from medseg.metrics.overlap import (
    adapted_rand_error,
    dice_per_label,
    hd95_per_label,
    pixel_error,
)

__all__ = ["CaseScores", "adapted_rand_error", "dice_per_label", "evaluate_folders",
           "hd95_per_label", "pixel_error", "score_case", "scores_to_csv", "summarize"]
