"""Prepared cases kept on disk, read when drawn: memory that does not grow with the dataset.

``data.stream`` runs prepare every case once (read, checked, resampled, normalised) and write
it to the run folder as ``.npy`` files; a :class:`StoredCase` stands for it where a
:class:`~medseg.training.dataset.PreparedCase` would (patch sampling, validation), and maps
its arrays from disk each time they are asked for (copy-on-write memory maps: only the pages a
patch touches are read, and they are released when the patch is made). Peak memory is then
one batch's cases, whatever the number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medseg.training.dataset import PreparedCase, load_raw_case, prepare_case
from medseg.training.sources import CasePair

if TYPE_CHECKING:
    from medseg.training.plan import Fingerprint, TrainingPlan


class StoredCase:
    """A prepared case in ``folder`` (``image.npy``, ``label.npy``, ``locations.npz``), with
    the attributes of a :class:`PreparedCase`, each read from disk when asked for."""

    def __init__(self, case_id: str, folder: Path) -> None:
        self.case_id = case_id
        self.folder = Path(folder)

    @property
    def image(self) -> torch.Tensor:
        return _mapped(self.folder / "image.npy")

    @property
    def label(self) -> torch.Tensor:
        return _mapped(self.folder / "label.npy")

    @property
    def class_locations(self) -> dict[int, torch.Tensor]:
        with np.load(self.folder / "locations.npz") as stored:
            return {int(k): torch.from_numpy(stored[k]) for k in stored.files}


def _mapped(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def store_case(case: PreparedCase, folder: Path, index: int) -> StoredCase:
    """Write ``case`` under ``folder / <index>-<case id>`` and return its
    :class:`StoredCase`."""
    where = Path(folder) / f"{index:05d}-{_safe(case.case_id)}"
    where.mkdir(parents=True, exist_ok=True)
    np.save(where / "image.npy", case.image.numpy())
    np.save(where / "label.npy", case.label.numpy())
    np.savez(where / "locations.npz",
             **{str(k): v.numpy() for k, v in case.class_locations.items()})
    return StoredCase(case.case_id, where)


def _safe(case_id: str) -> str:
    """A folder name for a case id (ids come from file names, but may hold separators)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id) or "case"


def prepare_streamed(
    pairs: Sequence[CasePair], train_ids: Sequence[str], val_ids: Sequence[str], *,
    folder: Path, load: dict[str, Any], plan_of: Callable[[Fingerprint], TrainingPlan],
    modality: str | None, label_names: dict[int, str] | None, seed: int, instances: bool,
    fov_pixels: Sequence[int] | None = None,
) -> tuple[Fingerprint, TrainingPlan, list[StoredCase], list[StoredCase], dict[str, Any]]:
    """Fingerprint, plan, prepared cases on disk and training domain, one case in memory at a
    time: a first pass summarises the training cases for the fingerprint (at most 2 million
    foreground intensities in all), a second prepares and stores every case and measures the
    training cases' domain.

    Args:
        load: Keyword arguments of :func:`~medseg.training.dataset.load_raw_case`.
        plan_of: The plan from the fingerprint.
    """
    from medseg.training.domain import case_domain, combine_domains
    from medseg.training.plan import combine_summaries, summarise_case

    by_id = {p.case_id: p for p in pairs}
    rng = np.random.default_rng(seed)
    cap = max(100, min(10000, 2_000_000 // max(len(train_ids), 1)))
    summaries = [summarise_case(load_raw_case(by_id[i], **load), rng, instances=instances,
                                max_samples=cap) for i in train_ids]
    fp = combine_summaries(summaries, modality=modality)
    del summaries
    plan = plan_of(fp)
    names = dict(plan.label_names)
    stored: dict[str, StoredCase] = {}
    stats = []
    for n, case_id in enumerate([*train_ids, *val_ids]):
        raw = load_raw_case(by_id[case_id], **load)
        if n < len(train_ids):
            stats.append(case_domain(raw, n, label_names=names,
                                     normalization=plan.normalization, instances=instances))
        prepared = prepare_case(raw, normalization=plan.normalization,
                                target_spacing=plan.target_spacing,
                                num_classes=plan.num_classes, seed=seed, instances=instances,
                                fov_pixels=fov_pixels, context_slices=plan.context_slices)
        stored[case_id] = store_case(prepared, folder, n)
    domain = combine_domains(stats, modality=plan.modality, instances=instances)
    return (fp, plan, [stored[i] for i in train_ids], [stored[i] for i in val_ids], domain)
