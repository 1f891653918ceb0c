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
    stats = [case_domain(c, i, label_names=label_names, normalization=normalization,
                         instances=instances) for i, c in enumerate(cases)]
    return combine_domains(stats, modality=modality, instances=instances, synthetic=synthetic,
                           intended_use=intended_use, limitations=limitations)


def case_domain(case: RawCase, index: int, *, label_names: dict[int, str], normalization: Any,
                instances: bool = False) -> dict[str, Any]:
    """What the domain needs of one case (``index``: its place among the training cases,
    which seeds the intensity sample); :func:`combine_domains` joins them."""
    unit = spacing_unit(case.image)
    ndim = case.image.meta.ndim
    size_unit = "mL" if ndim == 3 and unit == "mm" else f"{unit}^2" if ndim == 2 else "px^3"
    names = {1: "objects"} if instances else {k: v for k, v in label_names.items() if k}
    measure = label_volumes_ml if size_unit == "mL" else label_areas  # as predictions are
    ids = np.asarray(case.label.array[0])
    stats = {"unit": unit, "ndim": ndim, "extent": extent(case.image),
             "spacing": sorted_spacing(case.image),
             "quantiles": normalized_quantiles(case.image.array, normalization, seed=index),
             "sizes": measure(ids, case.image.meta.spacing, names, instances=instances)}
    if instances:
        counts = np.bincount(ids.ravel())[1:]
        stats["object_sizes"] = counts[counts > 0] * float(np.prod(case.image.meta.spacing))
    return stats


def combine_domains(stats: Sequence[dict[str, Any]], *, modality: str, instances: bool = False,
                    synthetic: bool = False, intended_use: str = "",
                    limitations: str = "") -> dict[str, Any]:
    """The domain (see :func:`compute_domain`) of the cases :func:`case_domain` described."""
    unit = "px" if all(s["unit"] == "px" for s in stats) else "mm"
    ndim = stats[0]["ndim"]
    size_unit = "mL" if ndim == 3 and unit == "mm" else f"{unit}^2" if ndim == 2 else "px^3"
    extents = np.array([s["extent"] for s in stats])
    spacings = np.array([s["spacing"] for s in stats])
    quantiles = np.array([s["quantiles"] for s in stats])
    sizes: dict[str, list[float]] = {}
    for s in stats:
        for name, value in s["sizes"].items():
            sizes.setdefault(name, []).append(value)
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
        "num_cases": len(stats),
        "synthetic": bool(synthetic),
        "intended_use": intended_use,
        "limitations": limitations,
    }
    if instances:
        domain["object_diameter"] = _diameter([s["object_sizes"] for s in stats], ndim)
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
    return _diameter(sizes, cases[0].image.meta.ndim if cases else 2)


def _diameter(sizes: Sequence[np.ndarray], ndim: int) -> float:
    if not sizes or not sum(len(s) for s in sizes):
        return 0.0
    size = float(np.median(np.concatenate(sizes)))
    diameter = 2 * np.sqrt(size / np.pi) if ndim == 2 else (6 * size / np.pi) ** (1 / 3)
    return round(float(diameter), 3)
