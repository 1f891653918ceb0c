"""Which image to correct next: a folder ranked by the model's confidence, least first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medseg.errors import CancelledError
from medseg.inference import Segmenter
from medseg.inference.ranking import folder_cases, rank_images


@pytest.fixture(scope="module")
def mixed_folder(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two H&E images (another kind for the nuclei model), two fluorescence images (its own
    kind) and a damaged file."""
    folder = tmp_path_factory.mktemp("mixed")
    for kind, source in (("he", "dsb2018_brightfield"), ("fl", "dsb2018_nuclei")):
        for p in sorted((shared_data / source / "images").glob("*.png"))[:2]:
            shutil.copy(p, folder / f"{kind}_{p.name[:6]}.png")
    (folder / "damaged.png").write_bytes(b"not a png")
    return folder


def test_the_model_is_least_confident_on_the_other_kind_of_image(mixed_folder: Path) -> None:
    segmenter = Segmenter.from_file("nuclei", device="cpu")
    done: list[tuple[int, int]] = []
    rows = rank_images(folder_cases(mixed_folder), segmenter,
                       progress=lambda d, t: done.append((d, t)))
    assert done[-1] == (5, 5)
    assert [r.name[:2] for r in rows] == ["he", "he", "fl", "fl", "da"]
    scores = [r.score for r in rows[:4]]
    assert scores == sorted(scores) and scores[1] < scores[2]
    assert all(r.objects is not None and r.objects > 0 for r in rows[:4])
    assert rows[-1].score is None and "damaged.png" in (rows[-1].error or "")


def test_ranking_stops_when_cancelled(mixed_folder: Path) -> None:
    segmenter = Segmenter.from_file("nuclei", device="cpu")
    with pytest.raises(CancelledError):
        rank_images(folder_cases(mixed_folder), segmenter, should_cancel=lambda: True)
