"""The compute guard: a case's work, estimated before the network runs, against the largest
image the model was trained on.

The work of a case is the number of sliding windows the engine runs on the model's grid (the
image resampled to the card's spacing, zoomed for ``object_diameter``, or each slice of a
volume given to a 2D model). The reference is the same count for the largest training image
the card's domain records (``domain.extent.max``, the field of view per axis, largest first;
its orientation is not recorded, so the most windows over the axis orders is taken). A case
whose work is more than ``InferenceOptions.max_work`` times the reference is refused before
any window runs, with a one-line reason that gives the estimate and the ways out (a region
around the structure, ``force``, a higher limit).

The count is the sliding-window plan's whether or not a 2D model then runs the image whole
(one pass over the padded image costs about as much as its windows, so the ratio is the same
either way). The seconds in the estimate are the windows times the seconds of one window on
this device, measured once per model, device and settings in this process by running a few
windows of noise (:func:`window_seconds`); they inform, the ratio decides, so the same case is
refused on every machine.

Examples:
    >>> from medseg.inference.guard import format_duration
    >>> format_duration(42.0), format_duration(840.0), format_duration(11_520.0)
    ('42 s', '14 min', '3.2 h')
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medseg.errors import MedsegError

#: Timed passes of the calibration (after one warm-up); the fastest is kept (what the
#: device can do: a busy machine only adds to it, and adds differently every time).
CALIBRATION_PASSES = 3


class ComputeLimitError(MedsegError):
    """A case's estimated work is far beyond the largest image the model was trained on; the
    case is refused before the network runs (``estimate`` says by how much)."""

    def __init__(self, message: str, estimate: WorkEstimate) -> None:
        super().__init__(message)
        self.estimate = estimate


@dataclass(frozen=True)
class WorkEstimate:
    """What one case costs the network, before it runs.

    Attributes:
        windows: Sliding windows on the model grid (for a 2D model over a volume: windows per
            slice times slices).
        grid: The shape the windows tile: the model grid (a 2D model over a volume: one
            slice's grid, then the number of slices).
        window: The model's window size.
        reference_windows: The same count for the largest training image (``None``: the card
            records no training domain, nothing to compare with).
        ratio: ``windows / reference_windows`` (``None`` without a reference).
        seconds_per_window: One window's forward pass on this device, measured (``None``
            when not measured: no reference to compare with).
        seconds: ``windows * seconds_per_window``: the network's share of the case's time.
        max_work: The limit in force: refused above this ratio.
        forced: ``force`` was set: never refused.
        refused: The case is refused.
        device: The device the seconds were measured on.
    """

    windows: int
    grid: list[int]
    window: list[int]
    reference_windows: int | None
    ratio: float | None
    seconds_per_window: float | None
    seconds: float | None
    max_work: float
    forced: bool
    refused: bool
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reason(self, source: str, card: Any) -> str:
        """The one-line refusal: the estimate, the reference, and the ways out."""
        domain = card.domain or {}
        largest = _shape((domain.get("extent") or {}).get("max") or []) + " " + str(
            domain.get("unit", "mm"))
        seconds = (f", about {format_duration(self.seconds)} on {self.device}"
                   if self.seconds is not None else "")
        ratio = self.ratio or 0.0
        return (f"{source}: refused before running: {self.windows:,} windows of "
                f"{_shape(self.window)} on the model grid ({_shape(self.grid)}){seconds}: "
                f"{ratio:,.0f}x the {self.reference_windows:,} windows of the largest image "
                f"model {card.name!r} was trained on ({largest}); "
                "segment a region around the structure (napari: region; Python: "
                "predict(region=...)), run it anyway with --force (napari: force), or raise "
                f"the limit (now {self.max_work:g}x) above {math.ceil(ratio):,} with "
                "--max-work or MEDSEG_MAX_WORK")


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"14 min"``, ``"3.2 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _shape(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in values)


def grid_windows(shape: Sequence[int], roi_size: Sequence[int], *, overlap: float,
                 margin: int | Sequence[int] | None, slices: int = 1) -> int:
    """Windows of the engine's plan over ``shape``, times ``slices``."""
    from medseg.inference.windows import plan_windows  # torch: not for the guard's importers

    return slices * plan_windows(shape, roi_size, overlap=overlap, margin=margin).num_windows


def reference_windows(card: Any, *, overlap: float,
                      margin: int | Sequence[int] | None) -> int | None:
    """Windows the engine would run on the largest training image the card records
    (``domain.extent.max`` over the spacing the model works at); the most over the axis
    orders (the domain's extents are sorted, their axes not recorded). ``None``: no domain,
    or one whose axes do not fit the model.

    A 2D model trained on volumes' slices (three extents) counts windows per slice times
    slices, each slice on the card's ``fov_pixels`` grid when it has one.
    """
    domain: Mapping[str, Any] = card.domain or {}
    extent = [float(v) for v in ((domain.get("extent") or {}).get("max") or ())]
    dims = card.spatial_dims
    if len(extent) not in (dims, 3 if dims == 2 else dims) or not all(v > 0 for v in extent):
        return None
    if card.target_spacing and len(extent) == dims:
        spacings = [[float(s) for s in card.target_spacing]]
    else:  # the model works on the image's own grid (or resamples slices to fov_pixels)
        finest = min((domain.get("spacing") or {}).get("min") or [1.0])
        spacings = [[float(finest)] * len(extent)]
    roi = list(card.roi_size)
    fov = list(card.fov_pixels) if card.fov_pixels else None
    best = 0
    for order in set(itertools.permutations(extent)):
        for spacing in spacings:
            shape = [max(1, round(e / s)) for e, s in zip(order, spacing, strict=True)]
            if len(shape) == dims:
                n = grid_windows(shape, roi, overlap=overlap, margin=margin)
            else:  # a 2D model over slices
                n = grid_windows(fov or shape[:2], roi, overlap=overlap, margin=margin,
                                 slices=shape[2])
            best = max(best, n)
    return best or None


_SECONDS: dict[Hashable, float] = {}
_SECONDS_LOCK = threading.Lock()


def window_seconds(key: Hashable, run_window: Callable[[], None]) -> float:
    """Seconds of one window's forward pass: ``run_window()`` once to warm up, then the
    fastest of :data:`CALIBRATION_PASSES` timed calls; cached under ``key`` (model, device,
    settings, threads) for the life of the process."""
    with _SECONDS_LOCK:
        if key in _SECONDS:
            return _SECONDS[key]
    run_window()
    times = []
    for _ in range(CALIBRATION_PASSES):
        t = time.perf_counter()
        run_window()
        times.append(time.perf_counter() - t)
    value = min(times)
    with _SECONDS_LOCK:
        return _SECONDS.setdefault(key, value)


def estimate_work(card: Any, grid: Sequence[int], *, slices: int | None, overlap: float,
                  margin: int | Sequence[int] | None, max_work: float, force: bool,
                  device: str, seconds_per_window: Callable[[], float]) -> WorkEstimate:
    """The work of a case whose windows tile ``grid`` (the model grid; with ``slices``, one
    slice's grid, run that many times), against the card's reference.

    ``seconds_per_window`` is called only when there is a reference to compare with (it runs
    the calibration the first time)."""
    roi = list(card.roi_size)
    windows = grid_windows(grid, roi, overlap=overlap, margin=margin, slices=slices or 1)
    reference = reference_windows(card, overlap=overlap, margin=margin)
    ratio = windows / reference if reference else None
    per_window = seconds_per_window() if reference else None
    return WorkEstimate(
        windows=windows, grid=[int(n) for n in grid] + ([int(slices)] if slices else []),
        window=[int(r) for r in roi], reference_windows=reference,
        ratio=round(ratio, 3) if ratio is not None else None,
        seconds_per_window=float(f"{per_window:.4g}") if per_window is not None else None,
        seconds=(float(f"{windows * per_window:.4g}") if per_window is not None else None),
        max_work=float(max_work), forced=bool(force),
        refused=bool(ratio is not None and ratio > max_work and not force), device=device)
