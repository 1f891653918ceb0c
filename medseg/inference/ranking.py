"""Which image to correct next: a folder's images ranked by the model's own confidence.

Each image is segmented with the probabilities kept, scored by
:func:`medseg.inference.confidence.case_confidence` (the engine's score when it made one) and
ranked least confident first (:func:`~medseg.inference.confidence.rank_least_confident`):
the images the model is least sure of are the ones a correction teaches it most.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import CancelledError, MedsegError
from medseg.inference.cases import CaseInput, discover_cases
from medseg.inference.confidence import CaseConfidence, case_confidence, rank_least_confident

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankedImage:
    """One image of a ranking.

    Attributes:
        case: The image (file, or DICOM series).
        confidence: The model's confidence in its result; ``None`` when the image failed.
        objects: Objects found (instance models), else ``None``.
        error: Why the image could not be segmented (it is ranked last).
    """

    case: CaseInput
    confidence: CaseConfidence | None
    objects: int | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.case.case_id

    @property
    def score(self) -> float | None:
        return None if self.confidence is None else self.confidence.score


def folder_cases(folder: str | Path) -> list[CaseInput]:
    """The images of a folder (files and DICOM series, searched recursively), readable ones.

    Raises:
        MedsegError: The folder holds no image.
    """
    cases = [c for c in discover_cases([Path(folder)]) if c.error is None]
    if not cases:
        raise MedsegError(f"{folder}: no images found (PNG, TIFF, NIfTI, DICOM series, ...)")
    return cases


def score_case(case: CaseInput, segmenter: Any, *,
               should_cancel: Callable[[], bool] | None = None) -> RankedImage:
    """Segment one image with the probabilities kept and score the result; a read or model
    error is recorded on the row instead of stopping the ranking."""
    from medseg.io import read_image

    try:
        image = read_image(case.path, series_uid=case.series_uid)
        prediction = segmenter.predict(image, return_probabilities=True,
                                       should_cancel=should_cancel)
    except CancelledError:
        raise
    except MedsegError as exc:
        logger.warning("ranking: %s skipped: %s", case.case_id, exc)
        return RankedImage(case, None, error=str(exc))
    confidence = prediction.confidence or case_confidence(prediction)
    objects = prediction.num_objects if prediction.instances else None
    return RankedImage(case, confidence, objects)


def rank_images(cases: Sequence[CaseInput], segmenter: Any, *,
                progress: Callable[[int, int], None] | None = None,
                should_cancel: Callable[[], bool] | None = None) -> list[RankedImage]:
    """Segment every image and rank them least confident first (failed images last).

    Args:
        cases: The images (:func:`folder_cases`).
        segmenter: A loaded :class:`medseg.inference.Segmenter`.
        progress: ``progress(done, total)`` after each image.
        should_cancel: Polled between images and windows; true raises ``CancelledError``.

    Raises:
        CancelledError: ``should_cancel()`` turned true.
    """
    rows: list[RankedImage] = []
    for i, case in enumerate(cases):
        if should_cancel is not None and should_cancel():
            raise CancelledError("ranking cancelled")
        rows.append(score_case(case, segmenter, should_cancel=should_cancel))
        if progress is not None:
            progress(i + 1, len(cases))
    return order_rows(rows)


def order_rows(rows: Sequence[RankedImage]) -> list[RankedImage]:
    """Rows least confident first (ties by name), the failed ones after them.

    Examples:
        >>> from medseg.inference.confidence import CaseConfidence
        >>> def row(name, score):
        ...     return RankedImage(CaseInput(name, Path(name)),
        ...                        None if score is None else CaseConfidence(score))
        >>> [r.name for r in order_rows([row("a", 0.9), row("b", None), row("c", 0.4)])]
        ['c', 'a', 'b']
    """
    by_name = {r.name: r for r in rows if r.score is not None}
    ranked = rank_least_confident((name, r.score) for name, r in by_name.items()
                                  if r.score is not None)
    failed = sorted((r for r in rows if r.score is None), key=lambda r: r.name)
    return [by_name[name] for name, _ in ranked] + failed
