"""The training domain a model card records (``ModelCard.domain``), measured on the training
cases: what :mod:`medseg.inference.fit` checks every input and prediction against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.inference.fit import (
    QUANTILES,
    extent,
    normalized_quantiles,
    sorted_spacing,
    spacing_unit,
)
from medseg.inference.postprocess import label_areas, label_volumes_ml
from medseg.training.dataset import RawCase


def compute_domain(cases: Sequence[RawCase], *, label_names: dict[int, str], normalization: Any,
                   modality: str, instances: bool = False, synthetic: bool = False,
                   intended_use: str = "", limitations: str = "") -> dict[str, Any]:
    """The domain of ``cases`` (the training split) as a JSON-ready dict.

    Keys: ``modality``; ``unit`` (``"mm"``, or ``"px"`` when the images have no pixel size);
    ``extent`` and ``spacing`` (``{"min", "max"}`` per axis, largest first); ``intensity``
    (``{"quantiles", "min", "max"}``: the range over the cases of each quantile of the
    normalised image); ``label_sizes`` (``{name: [min, max]}`` of each label's size per case,
    in ``size_unit``: mL for volumes, px^2 or mm^2 for 2D images; an instance model's objects
    together); ``synthetic``, ``intended_use``, ``limitations``; for instance models
    ``object_diameter`` (:func:`object_diameter`).
    """
    unit = "px" if all(spacing_unit(c.image) == "px" for c in cases) else "mm"
    ndim = cases[0].image.meta.ndim
    size_unit = "mL" if ndim == 3 and unit == "mm" else f"{unit}^2" if ndim == 2 else "px^3"
    extents = np.array([extent(c.image) for c in cases])
    spacings = np.array([sorted_spacing(c.image) for c in cases])
    quantiles = np.array([normalized_quantiles(c.image.array, normalization, seed=i)
                          for i, c in enumerate(cases)])
    names = {1: "objects"} if instances else {k: v for k, v in label_names.items() if k}
    sizes: dict[str, list[float]] = {name: [] for name in names.values()}
    measure = label_volumes_ml if size_unit == "mL" else label_areas  # as predictions are
    for c in cases:
        case_sizes = measure(np.asarray(c.label.array[0]), c.image.meta.spacing, names,
                             instances=instances)
        for name in names.values():
            sizes[name].append(case_sizes[name])
    domain = {
        "modality": modality.upper(),
        "unit": unit,
        "extent": {"min": extents.min(0).round(3).tolist(),
                   "max": extents.max(0).round(3).tolist()},
        "spacing": {"min": spacings.min(0).round(4).tolist(),
                    "max": spacings.max(0).round(4).tolist()},
        "intensity": {"quantiles": list(QUANTILES), "min": quantiles.min(0).round(3).tolist(),
                      "max": quantiles.max(0).round(3).tolist()},
        "label_sizes": {name: [round(min(v), 6), round(max(v), 6)] for name, v in sizes.items()
                        if v},
        "size_unit": size_unit,
        "num_cases": len(cases),
        "synthetic": bool(synthetic),
        "intended_use": intended_use,
        "limitations": limitations,
    }
    if instances:
        domain["object_diameter"] = object_diameter(cases)
    return domain


def object_diameter(cases: Sequence[RawCase]) -> float:
    """Median equivalent-circle (sphere) diameter of every object in the instance label maps
    of ``cases``, in their spacing's unit: the object size an instance model learned, which
    ``InferenceOptions.object_diameter`` scales an input to (Cellpose's "diameter")."""
    sizes = []
    for c in cases:
        ids = np.asarray(c.label.array[0])
        counts = np.bincount(ids.ravel())[1:]
        sizes.append(counts[counts > 0] * float(np.prod(c.image.meta.spacing)))
    if not sizes or not sum(len(s) for s in sizes):
        return 0.0
    size = float(np.median(np.concatenate(sizes)))
    ndim = cases[0].image.meta.ndim
    diameter = 2 * np.sqrt(size / np.pi) if ndim == 2 else (6 * size / np.pi) ** (1 / 3)
    return round(float(diameter), 3)
