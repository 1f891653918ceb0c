"""Score predicted label maps against reference label maps: per case, then summarised.

Used by ``medseg-evaluate`` (folders of predictions vs labels, or a model on a dataset) and the
evaluation benchmarks. Metrics per label: Dice and 95th-percentile Hausdorff distance (mm); for
2D binary membrane maps (EM) also pixel error (misclassified fraction, and the ISBI 2012
challenge's 1 - maximal F-score) and adapted Rand error.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DatasetError
from medseg.io import MedImage, read_image
from medseg.metrics.overlap import (
    adapted_rand_error,
    challenge_pixel_error,
    dice_per_label,
    hd95_per_label,
    interior_confusion,
    pixel_error,
)

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff")
CASE_ID_SUFFIXES = (*LABEL_SUFFIXES, ".dcm")


@dataclass
class CaseScores:
    """Metrics of one case."""

    case_id: str
    dice: dict[int, float]
    hd95: dict[int, float]
    pixel_error: float | None = None
    rand_error: float | None = None
    challenge_pixel_error: float | None = None
    interior_counts: np.ndarray | None = None  # (thresholds, [tp, fp, fn]), pooled by summarize
    extra: dict[str, Any] = field(default_factory=dict)


def map_values(array: np.ndarray, mapping: dict[int, int] | None, *, what: str) -> np.ndarray:
    """Apply a raw value -> class mapping; values not in the mapping raise ``DatasetError``."""
    values = np.asarray(array).astype(np.int64)
    if mapping is None:
        return values
    unknown = sorted(int(v) for v in np.unique(values) if int(v) not in mapping)
    if unknown:
        raise DatasetError(f"{what}: values {unknown} are not in the value mapping "
                           f"{sorted(mapping)}")
    out = np.zeros_like(values)
    for raw, cls in mapping.items():
        out[values == raw] = cls
    return out


def score_case(case_id: str, prediction: MedImage, label: MedImage, *, labels: Sequence[int],
               em: bool = False, prediction_values: dict[int, int] | None = None,
               label_values: dict[int, int] | None = None,
               membrane_probability: np.ndarray | None = None) -> CaseScores:
    """Compare one prediction with its reference (same grid required).

    With ``em``, ``membrane_probability`` (the membrane class's probability on the label's
    grid, no channel axis) is what the challenge pixel error thresholds; without it the binary
    prediction is the proposal.

    Raises:
        DatasetError: shapes or grids differ, or values fall outside the given mappings.
    """
    if prediction.spatial_shape != label.spatial_shape:
        raise DatasetError(f"case {case_id}: prediction shape {prediction.spatial_shape} differs "
                           f"from label shape {label.spatial_shape}")
    if not prediction.meta.same_grid(label.meta):
        raise DatasetError(f"case {case_id}: prediction and label grids differ (origin "
                           f"{prediction.meta.origin} vs {label.meta.origin}, spacing "
                           f"{prediction.meta.spacing} vs {label.meta.spacing})")
    pred = map_values(prediction.array[0], prediction_values, what=f"case {case_id} prediction")
    ref = map_values(label.array[0], label_values, what=f"case {case_id} label")
    scores = CaseScores(case_id, dice_per_label(pred, ref, labels),
                        hd95_per_label(pred, ref, labels, spacing=label.meta.spacing))
    if em:
        scores.pixel_error = pixel_error(pred, ref)
        scores.rand_error = adapted_rand_error(pred, ref)
        proposal = (pred > 0).astype(np.float32) if membrane_probability is None \
            else membrane_probability
        scores.interior_counts = interior_confusion(proposal, ref > 0)
        scores.challenge_pixel_error = challenge_pixel_error(scores.interior_counts)
    return scores


def case_id_of(path: Path) -> str:
    """File name without its image suffix (``case_001.nii.gz`` -> ``case_001``)."""
    name = path.name
    for suffix in CASE_ID_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def pair_by_case_id(primary_dir: Path, other_dir: Path, *, suffixes: Sequence[str],
                    primary: str, other: str) -> dict[str, tuple[Path, Path]]:
    """Pair the files of two folders by case id; every ``primary`` file needs an ``other`` one.

    Raises:
        DatasetError: a folder is missing, ``primary_dir`` holds no file with ``suffixes``, or
            a ``primary`` file has no ``other`` file (the message names the first such case).
    """
    def listing(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise DatasetError(f"folder {folder} does not exist")
        return {case_id_of(p): p for p in sorted(folder.iterdir())
                if p.is_file() and p.name.lower().endswith(tuple(suffixes))}

    firsts, seconds = listing(primary_dir), listing(other_dir)
    if not firsts:
        raise DatasetError(f"folder {primary_dir} holds no {primary} files "
                           f"({', '.join(suffixes)})")
    missing = sorted(set(firsts) - set(seconds))
    if missing:
        raise DatasetError(f"case {missing[0]}: no {other} in {other_dir} "
                           f"({len(missing)} {primary}(s) without a {other})")
    return {k: (firsts[k], seconds[k]) for k in firsts}


def match_folders(prediction_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    """Pair prediction and label files by case id; every label needs a prediction."""
    pairs = pair_by_case_id(label_dir, prediction_dir, suffixes=LABEL_SUFFIXES,
                            primary="label", other="prediction")
    return [(k, pairs[k][1], pairs[k][0]) for k in sorted(pairs)]


def evaluate_folders(prediction_dir: str | Path, label_dir: str | Path, *,
                     labels: Sequence[int] | None = None, em: bool = False,
                     prediction_values: dict[int, int] | None = None,
                     label_values: dict[int, int] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> list[CaseScores]:
    """Score every label file in ``label_dir`` against the same-named file in ``prediction_dir``.

    ``labels`` defaults to every non-zero class found in the first reference label map.
    """
    pairs = match_folders(Path(prediction_dir), Path(label_dir))
    out = []
    for i, (case_id, pred_path, label_path) in enumerate(pairs):
        label = read_image(label_path)
        if labels is None:
            ref = map_values(label.array[0], label_values, what=f"case {case_id} label")
            labels = [int(v) for v in np.unique(ref) if v != 0]
        out.append(score_case(case_id, read_image(pred_path), label, labels=labels, em=em,
                              prediction_values=prediction_values, label_values=label_values))
        if progress is not None:
            progress(i + 1, len(pairs))
    return out


def _nanmean(values: Iterable[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def summarize(scores: Sequence[CaseScores], label_names: dict[int, str] | None = None
              ) -> dict[str, Any]:
    """Mean (and standard deviation) per label over cases, plus EM metrics when present."""
    if not scores:
        raise DatasetError("nothing to summarise: no cases were scored")
    names = label_names or {}
    labels = list(scores[0].dice)
    summary: dict[str, Any] = {"num_cases": len(scores), "labels": {}}
    for c in labels:
        d = [s.dice[c] for s in scores]
        h = [s.hd95[c] for s in scores]
        summary["labels"][names.get(c, str(c))] = {
            "dice_mean": float(np.mean(d)), "dice_std": float(np.std(d)),
            "hd95_mean_mm": _nanmean(h), "hd95_undefined_cases": int(sum(map(math.isnan, h))),
        }
    if scores[0].pixel_error is not None:
        summary["pixel_error"] = float(np.mean([s.pixel_error for s in scores]))
        summary["adapted_rand_error"] = float(np.mean([s.rand_error for s in scores]))
    if all(s.interior_counts is not None for s in scores):
        # The challenge scores a stack: counts summed over its slices, then the best threshold.
        pooled = np.sum([s.interior_counts for s in scores], axis=0)
        summary["challenge_pixel_error"] = challenge_pixel_error(pooled)
    return summary


def scores_to_csv(scores: Sequence[CaseScores], label_names: dict[int, str] | None = None) -> str:
    """One row per case: Dice and HD95 per label (and EM metrics when present)."""
    names = label_names or {}
    labels = list(scores[0].dice) if scores else []
    em = bool(scores) and scores[0].pixel_error is not None
    header = ["case_id"] + [f"dice_{names.get(c, c)}" for c in labels] + \
        [f"hd95_mm_{names.get(c, c)}" for c in labels] + \
        (["pixel_error", "adapted_rand_error", "challenge_pixel_error"] if em else [])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for s in scores:
        writer.writerow([s.case_id] + [f"{s.dice[c]:.5f}" for c in labels]
                        + [f"{s.hd95[c]:.3f}" for c in labels]
                        + ([f"{s.pixel_error:.5f}", f"{s.rand_error:.5f}",
                            f"{s.challenge_pixel_error:.5f}"] if em else []))
    return buf.getvalue()
