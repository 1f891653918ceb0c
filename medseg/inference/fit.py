"""Does this image fit the model? Checks of an input (and of the prediction) against the
domain the model was trained on, as its card records it (``ModelCard.domain``).

The domain (filled by ``medseg-train`` from the training cases, see
:func:`medseg.training.domain.compute_domain`) holds the modality, the field of view and
spacing ranges, the distribution of normalised intensities, the range of each label's size,
whether the training data were synthetic, and the intended use. :func:`check_input` and
:func:`check_output` compare one case with it; each check gives a level and a message a
radiographer can act on. What the input does not say (a NIfTI file has no modality) is
skipped, and the report says so.

Levels: ``ok``, ``skipped``, ``warn`` (the case runs; ``--strict`` fails it) and ``refuse``
(wrong dimensionality or channels: the engine raises ``ModelError``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.io.image import MedImage
from medseg.transforms import normalize_intensity

LEVELS = ("ok", "skipped", "warn", "refuse")
#: Quantiles (percent) of the normalised intensities recorded in a domain.
QUANTILES = (1.0, 25.0, 50.0, 75.0, 99.0)
#: Voxels sampled per image for the intensity quantiles.
SAMPLE_VOXELS = 200_000
#: A field of view or spacing more than this factor outside the training range warns.
RANGE_FACTOR = 1.5
#: Smallest intensity tolerance, as a fraction of the training quantiles' whole range.
TOLERANCE_OF_RANGE = 0.1
#: A predicted label size more than this factor outside the training range warns.
SIZE_FACTOR = 3.0
#: The page that says what to do about each warning; every warning's message ends with a link
#: to its entry there (``docs/troubleshooting.md`` in the repository).
TROUBLESHOOTING = "docs/troubleshooting.md"
#: The troubleshooting entry (anchor) of each check's warning.
HELP_ANCHORS = {
    "domain": "fit-no-training-domain",
    "training_data": "fit-synthetic-training-data",
    "modality": "fit-modality",
    "field_of_view": "fit-field-of-view",
    "spacing": "fit-voxel-size",
    "intensity": "fit-intensity",
    "label_sizes": "fit-label-size",
}


def help_link(check: str) -> str:
    """Where a check's warning is explained: ``docs/troubleshooting.md#<anchor>``.

    Examples:
        >>> help_link("modality")
        'docs/troubleshooting.md#fit-modality'
    """
    return f"{TROUBLESHOOTING}#{HELP_ANCHORS.get(check, 'fit-report')}"


@dataclass(frozen=True)
class FitCheck:
    """One check: ``name`` (modality, field_of_view, ...), ``level`` and ``message`` (a
    warning's ends with ``(see docs/troubleshooting.md#<anchor>)``, :func:`help_link`);
    ``detail`` holds the figures a warning was made from, where a caller may word them
    otherwise (the intensity check's: ``quantiles``, ``image``, ``training_min``,
    ``training_max``)."""

    name: str
    level: str
    message: str
    detail: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.level in ("warn", "refuse") and TROUBLESHOOTING not in self.message:
            # a warning says where to read what to do about it
            object.__setattr__(self, "message", f"{self.message} (see {help_link(self.name)})")

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "level": self.level, "message": self.message}


@dataclass
class FitReport:
    """All checks of one case; ``level`` is the most severe."""

    checks: list[FitCheck] = field(default_factory=list)

    @property
    def level(self) -> str:
        """``refuse``, ``warn`` or ``ok`` (skipped checks do not lower confidence in a fit;
        the report lists them)."""
        return max((c.level for c in self.checks if c.level != "skipped"), key=LEVELS.index,
                   default="ok")

    @property
    def warnings(self) -> list[FitCheck]:
        return [c for c in self.checks if c.level in ("warn", "refuse")]

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "checks": [c.to_dict() for c in self.checks]}


def normalized_quantiles(array: np.ndarray, normalization: Any, *, seed: int = 0
                         ) -> list[float]:
    """:data:`QUANTILES` of an image's first channel after the model's normalisation,
    on a sample of at most :data:`SAMPLE_VOXELS` voxels."""
    values = np.asarray(array[0]).ravel(order="K")  # no copy, whatever the memory order
    if values.size > SAMPLE_VOXELS:
        rng = np.random.default_rng(seed)
        values = values[rng.integers(0, values.size, SAMPLE_VOXELS)]  # O(sample), not O(n)
    values = normalize_intensity(values.astype(np.float32)[None], normalization)[0]
    return [float(v) for v in np.percentile(values, QUANTILES)]


def extent(image: MedImage) -> list[float]:
    """Field of view per axis (shape x spacing), largest first (orientation does not matter)."""
    return sorted((float(n * s) for n, s in zip(image.spatial_shape, image.meta.spacing,
                                                strict=True)), reverse=True)


def sorted_spacing(image: MedImage) -> list[float]:
    """Voxel size per axis, largest first (as :func:`extent`)."""
    return sorted((float(s) for s in image.meta.spacing), reverse=True)


def spacing_unit(image: MedImage) -> str:
    """``"px"`` for an image without a pixel size (PNG, most TIFF), else ``"mm"``."""
    return "px" if image.meta.provenance.spacing_unit == "px" else "mm"


def _format_size(values: list[float] | tuple[float, ...], unit: str) -> str:
    """``"40x32x26 mm"``: sizes as the fit messages show them."""
    return "x".join(f"{v:.3g}" for v in values) + f" {unit}"


def check_input(image: MedImage, card: Any) -> FitReport:
    """Check ``image`` (as the model takes it: channels already picked) against ``card``'s
    domain. A card without a domain gives one ``skipped`` check."""
    domain: Mapping[str, Any] | None = card.domain
    report = FitReport()
    add = report.checks.append
    if not domain:
        add(FitCheck("domain", "skipped", f"model {card.name!r} records no training domain: "
                     "nothing to compare the image with"))
        return report
    add(_check_synthetic(image, domain))
    add(_check_modality(image, domain))
    unit = spacing_unit(image)
    if getattr(card, "fov_pixels", None):
        add(FitCheck("field_of_view", "skipped", "the model resamples every slice to its "
                     "training field of view"))
    elif unit != domain.get("unit", "mm"):
        add(FitCheck("field_of_view", "skipped", f"the image's size is in {unit}, the "
                     f"training images' in {domain.get('unit', 'mm')}"))
    else:
        add(_check_range("field_of_view", extent(image), domain.get("extent"), unit,
                         "this model was trained on images of {train}; this image covers "
                         "{got}: {advice}"))
        add(_check_range("spacing", sorted_spacing(image), domain.get("spacing"), unit,
                         "this model was trained on voxels of {train}; this image's are "
                         "{got}"))
    add(_check_intensity(image, domain, card))
    return report


def _check_synthetic(image: MedImage, domain: Mapping[str, Any]) -> FitCheck:
    if not domain.get("synthetic"):
        return FitCheck("training_data", "ok", "trained on real images")
    description = (image.meta.provenance.series_description or "").lower()
    if image.meta.provenance.format == "synthetic" or "synthetic" in description:
        return FitCheck("training_data", "ok", "a synthetic image, like the training data")
    return FitCheck("training_data", "warn", "this model was trained on synthetic data only "
                    "(medseg's demo phantoms): it is not for real patient images, and its "
                    "labels on this image mean nothing clinically")


def _check_modality(image: MedImage, domain: Mapping[str, Any]) -> FitCheck:
    want = str(domain.get("modality") or "").upper()
    got = str(image.meta.provenance.modality or "").upper()
    if not want:
        return FitCheck("modality", "skipped", "the model's training modality is not recorded")
    if not got:
        return FitCheck("modality", "skipped", f"the image does not say its modality (the "
                        f"model expects {want})")
    if got != want:
        return FitCheck("modality", "warn", f"this model was trained on {want} images; this "
                        f"image is {got}")
    return FitCheck("modality", "ok", f"{got}, as trained")


def _check_range(name: str, values: list[float], span: Mapping[str, Any] | None, unit: str,
                 template: str) -> FitCheck:
    if not span:
        return FitCheck(name, "skipped", f"the training {name.replace('_', ' ')} range is not "
                        "recorded")
    lo, hi = list(span["min"]), list(span["max"])
    if len(lo) != len(values):
        return FitCheck(name, "skipped", f"the image has {len(values)} axes, the training "
                        f"images {len(lo)}")
    outside = [v > h * RANGE_FACTOR or v < lo_ / RANGE_FACTOR
               for v, lo_, h in zip(values, lo, hi, strict=True)]
    train = (_format_size(hi, unit) if lo == hi
             else f"{_format_size(lo, unit)} to {_format_size(hi, unit)}")
    got = _format_size(values, unit)
    if not any(outside):
        return FitCheck(name, "ok", f"{got}, within the training range ({train})")
    bigger = any(v > h * RANGE_FACTOR for v, h in zip(values, hi, strict=True))
    advice = ("crop it to the region the model segments first (napari: segment inside a box)"
              if bigger else "it is much smaller than what the model saw")
    return FitCheck(name, "warn", template.format(train=train, got=got, advice=advice))


def _check_intensity(image: MedImage, domain: Mapping[str, Any], card: Any) -> FitCheck:
    intensity = domain.get("intensity")
    if not intensity:
        return FitCheck("intensity", "skipped", "the training intensity range is not recorded")
    got = normalized_quantiles(image.array, card.normalization)
    lo, hi = intensity["min"], intensity["max"]
    # tolerance: half the training spread of each quantile, and at least a tenth of the
    # whole training range (normalised units: a z-score's or a 0..1 percentile scale's)
    floor = TOLERANCE_OF_RANGE * (max(hi) - min(lo))
    off = [q for q, v, a, b in zip(QUANTILES, got, lo, hi, strict=True)
           if not a - max(floor, (b - a) / 2) <= v <= b + max(floor, (b - a) / 2)]
    if not off:
        return FitCheck("intensity", "ok", "intensities within the training distribution")
    worst = ", ".join(f"p{q:g} {v:.2f} (training {a:.2f} to {b:.2f})"
                      for q, v, a, b in zip(QUANTILES, got, lo, hi, strict=True) if q in off)
    return FitCheck("intensity", "warn", "the image's intensities after the model's "
                    f"normalisation do not look like the training images' ({worst}): another "
                    "kind of image, contrast or stain?",
                    detail={"quantiles": list(QUANTILES), "image": got,
                            "training_min": list(lo), "training_max": list(hi)})


def intensity_in_words(detail: Mapping[str, Any]) -> str:
    """How an image's intensities differ from the training images', in words a biologist
    reads, from an intensity check's ``detail`` (same tolerances as the check).

    A median above the training range, where the training images were mostly dark (a dark
    background), is the inverted contrast of a stained or brightfield image.

    Examples:
        >>> he = {"quantiles": [1.0, 25.0, 50.0, 75.0, 99.0],
        ...       "image": [0.0, 0.47, 0.81, 0.89, 1.0],
        ...       "training_min": [0.0, 0.0, 0.0, 0.0, 0.03],
        ...       "training_max": [0.0, 0.08, 0.13, 0.55, 0.99]}
        >>> intensity_in_words(he)
        'brighter background, dark objects: a stained or brightfield image?'
        >>> intensity_in_words({**he, "image": [0.0, 0.05, 0.1, 0.95, 1.0]})
        'more bright area'
    """
    q = [float(v) for v in detail["quantiles"]]
    got = [float(v) for v in detail["image"]]
    lo = [float(v) for v in detail["training_min"]]
    hi = [float(v) for v in detail["training_max"]]
    whole = max(hi) - min(lo)
    floor = TOLERANCE_OF_RANGE * whole

    def off(i: int) -> int:  # +1 above the training range, -1 below, 0 within
        tol = max(floor, (hi[i] - lo[i]) / 2)
        return 1 if got[i] > hi[i] + tol else -1 if got[i] < lo[i] - tol else 0

    mid = q.index(50.0) if 50.0 in q else len(q) // 2
    if off(mid) > 0:
        dark = hi[mid] <= min(lo) + 0.25 * whole  # training images mostly dark
        return ("brighter background, dark objects: a stained or brightfield image?" if dark
                else "brighter overall")
    if off(mid) < 0:
        bright = lo[mid] >= min(lo) + 0.75 * whole
        return ("darker background, bright objects: a fluorescence image?" if bright
                else "darker overall")
    words = []
    low_side = [off(i) for i in range(mid)]
    high_side = [off(i) for i in range(mid + 1, len(q))]
    if any(v > 0 for v in low_side):
        words.append("brighter background")
    elif any(v < 0 for v in low_side):
        words.append("darker background")
    if any(v > 0 for v in high_side):
        words.append("more bright area")
    elif any(v < 0 for v in high_side):
        words.append("fainter bright parts (lower contrast)")
    return ", ".join(words) or "different brightness or contrast"


def check_output(sizes: Mapping[str, float], unit: str, card: Any) -> list[FitCheck]:
    """Check the predicted size of each label (mL, or area in ``unit``) against the range
    over the training cases."""
    domain: Mapping[str, Any] | None = card.domain
    if not domain or not domain.get("label_sizes"):
        return []
    if getattr(card, "fov_pixels", None):
        return [FitCheck("label_sizes", "skipped", "the model works on a resampled field of "
                         "view; training sizes are not comparable")]
    if unit != domain.get("size_unit"):
        return [FitCheck("label_sizes", "skipped", f"sizes in {unit}, the training sizes in "
                         f"{domain.get('size_unit')}")]
    checks = []
    for name, (lo, hi) in domain["label_sizes"].items():
        if name not in sizes:
            continue
        v = float(sizes[name])
        if v > hi * SIZE_FACTOR or 0 < v < lo / SIZE_FACTOR:
            checks.append(FitCheck("label_sizes", "warn", f"{name}: {v:.3g} {unit} predicted; "
                                   f"the training cases had {lo:.3g} to {hi:.3g} {unit}: "
                                   "check the image is what the model is for"))
    if not checks:
        checks.append(FitCheck("label_sizes", "ok", "every label's size within the training "
                               "range"))
    return checks
