"""How well a predicted label map matches known lesions: Dice, lesion-wise detection, volumes.

Voxel-wise Dice comes from :func:`medseg.metrics.dice_per_label`. Lesion-wise counting is done
here because neither MONAI nor medseg.metrics count lesions: truth and prediction are split into
connected components (``scipy.ndimage.label``, 26-connectivity in 3D), a true lesion is
*detected* when any predicted lesion component overlaps it, and a predicted component that
touches no true lesion is a *false positive*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.errors import GeometryError
from medseg.io.image import MedImage
from medseg.metrics import dice_per_label


@dataclass(frozen=True)
class LesionMatch:
    """One true lesion and what the prediction made of it.

    Attributes:
        index: 1-based number of the true lesion (connected components in scan order).
        centre_mm: World (LPS, mm) centroid of the true lesion.
        true_ml: True lesion volume.
        predicted_ml: Volume of the predicted lesion components that overlap it.
        detected: At least one predicted lesion voxel lies in the true lesion.
        dice: Dice of the true lesion against the overlapping predicted components.
    """

    index: int
    centre_mm: tuple[float, ...]
    true_ml: float
    predicted_ml: float
    detected: bool
    dice: float


@dataclass(frozen=True)
class LesionEvaluation:
    """Agreement of a prediction with the ground truth on the same grid.

    Attributes:
        dice: Voxel-wise Dice per label name (e.g. ``{"liver": 0.96, "lesion": 0.85}``).
        lesions: One entry per true lesion.
        false_positives: Predicted lesion components touching no true lesion.
        false_positive_ml: Their total volume.
        true_total_ml: Total true lesion volume.
        predicted_total_ml: Total predicted lesion volume.
    """

    dice: dict[str, float]
    lesions: tuple[LesionMatch, ...]
    false_positives: int
    false_positive_ml: float
    true_total_ml: float
    predicted_total_ml: float

    @property
    def detected(self) -> int:
        """Number of true lesions detected."""
        return sum(m.detected for m in self.lesions)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["detected"] = self.detected
        d["lesions"] = [asdict(m) for m in self.lesions]
        return d


def evaluate_lesions(
    prediction: MedImage,
    truth: MedImage,
    *,
    lesion_label: int,
    label_names: dict[int, str],
) -> LesionEvaluation:
    """Compare a predicted label map with the truth, voxel-wise and lesion by lesion.

    Args:
        prediction: One-channel predicted label map.
        truth: One-channel true label map on the same grid (shape, spacing, origin, direction).
        lesion_label: Label value of lesions.
        label_names: ``{value: name}`` of the labels scored with Dice (background excluded).

    Returns:
        Dice per label, per-lesion detection and volumes, false positives.

    Raises:
        GeometryError: The two label maps are not on the same grid.

    Examples:
        >>> from medseg.io.image import ImageMeta
        >>> t = np.zeros((1, 20, 20, 20), np.uint8); t[0, 2:6, 2:6, 2:6] = 2
        >>> t[0, 12:16, 12:16, 12:16] = 2
        >>> p = t.copy(); p[0, 12:16, 12:16, 12:16] = 0; p[0, 8:10, 2:4, 2:4] = 2
        >>> meta = ImageMeta.identity(3)
        >>> ev = evaluate_lesions(MedImage(p, meta), MedImage(t, meta), lesion_label=2,
        ...                       label_names={2: "lesion"})
        >>> ev.detected, len(ev.lesions), ev.false_positives, round(ev.dice["lesion"], 3)
        (1, 2, 1, 0.64)
    """
    if prediction.spatial_shape != truth.spatial_shape or not prediction.meta.same_grid(
        truth.meta
    ):
        raise GeometryError(
            f"prediction grid (shape {prediction.spatial_shape}, spacing "
            f"{prediction.meta.spacing}, origin {prediction.meta.origin}) differs from the truth "
            f"grid (shape {truth.spatial_shape}, spacing {truth.meta.spacing}, origin "
            f"{truth.meta.origin})"
        )
    pred, true = prediction.array[0], truth.array[0]
    dice = dice_per_label(pred, true, sorted(label_names))
    voxel_ml = float(np.prod(truth.meta.spacing)) / 1000.0
    structure = ndimage.generate_binary_structure(true.ndim, true.ndim)
    pred_lesion = pred == lesion_label
    true_cc, n_true = ndimage.label(true == lesion_label, structure=structure)
    pred_cc, n_pred = ndimage.label(pred_lesion, structure=structure)
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    # Which predicted components touch which true lesions, from the overlapping voxel pairs.
    both = (true_cc > 0) & (pred_cc > 0)
    pairs = np.unique(np.stack([true_cc[both], pred_cc[both]]), axis=1)
    matches = []
    centroids = ndimage.center_of_mass(np.ones_like(true_cc), true_cc, range(1, n_true + 1))
    for i in range(1, n_true + 1):
        comps = pairs[1, pairs[0] == i]
        in_true = true_cc == i
        pred_here = np.isin(pred_cc, comps) if comps.size else np.zeros_like(in_true)
        overlap = int(np.count_nonzero(in_true & pred_here))
        size_true = int(np.count_nonzero(in_true))
        size_pred = int(pred_sizes[comps].sum())
        centre = truth.meta.index_to_world(np.asarray([centroids[i - 1]]))[0]
        matches.append(LesionMatch(
            index=i,
            centre_mm=tuple(round(float(c), 2) for c in centre),
            true_ml=size_true * voxel_ml,
            predicted_ml=size_pred * voxel_ml,
            detected=bool(comps.size),
            dice=2.0 * overlap / (size_true + size_pred),
        ))
    fp = sorted(set(range(1, n_pred + 1)) - set(pairs[1].tolist()))
    return LesionEvaluation(
        dice={label_names[k]: float(v) for k, v in dice.items()},
        lesions=tuple(matches),
        false_positives=len(fp),
        false_positive_ml=float(pred_sizes[fp].sum()) * voxel_ml,
        true_total_ml=float(np.count_nonzero(true_cc)) * voxel_ml,
        predicted_total_ml=float(np.count_nonzero(pred_lesion)) * voxel_ml,
    )
