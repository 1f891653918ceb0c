"""Segmentation metrics on label arrays (numpy in, floats out; MONAI/skimage do the hard parts)."""

from medseg.metrics.evaluate import (
    CaseScores,
    evaluate_folders,
    score_case,
    scores_to_csv,
    summarize,
)
from medseg.metrics.instance import (
    DSB_THRESHOLDS,
    InstanceScores,
    evaluate_instance_folders,
    instance_scores,
    match_instances,
    pooled_scores,
)
from medseg.metrics.overlap import (
    CHALLENGE_THRESHOLDS,
    adapted_rand_error,
    challenge_pixel_error,
    dice_per_label,
    hd95_per_label,
    interior_confusion,
    pixel_error,
)

__all__ = ["CHALLENGE_THRESHOLDS", "DSB_THRESHOLDS", "CaseScores", "InstanceScores",
           "adapted_rand_error", "challenge_pixel_error", "dice_per_label", "evaluate_folders",
           "evaluate_instance_folders",
           "hd95_per_label", "instance_scores", "interior_confusion", "match_instances",
           "pixel_error", "pooled_scores", "score_case", "scores_to_csv", "summarize"]
