"""The in-process runner with several cases in flight: same outputs as one at a time, a bad
file still fails alone, torch's thread count comes back, and the automatic choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from inference_helpers import tiny_card
from PIL import Image

from medseg.errors import ConfigError
from medseg.inference.batch import LocalRunner, run_batch
from medseg.inference.engine import Segmenter
from medseg.model_card import save_model


@pytest.fixture(scope="module")
def tiny_2d_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card, net = tiny_card(name="tiny2d", spatial_dims=2, roi=[32, 32])
    return save_model(tmp_path_factory.mktemp("models") / "tiny2d.safetensors", net, card)


def _images(root: Path, count: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):  # sizes differ, some not a multiple of the window
        shape = (40 + 7 * i, 33 + 5 * i)
        path = root / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _outputs(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: tifffile.imread(p) for p in sorted(out.glob("*.tif"))}


def test_cases_in_flight_give_the_outputs_of_one_at_a_time(tmp_path: Path,
                                                           tiny_2d_model: Path) -> None:
    paths = _images(tmp_path / "in", 7)
    (tmp_path / "in" / "broken.png").write_bytes(paths[0].read_bytes()[:60])  # truncated
    threads = torch.get_num_threads()
    serial = run_batch([tmp_path / "in"], tiny_2d_model, tmp_path / "one", jobs=1)
    events: list[dict] = []
    parallel = run_batch([tmp_path / "in"], tiny_2d_model, tmp_path / "three", jobs=3,
                         on_event=events.append)
    assert torch.get_num_threads() == threads
    for summary in (serial, parallel):
        assert (summary.total, summary.completed, list(summary.failed)) == (8, 7, ["broken"])
    one, three = _outputs(tmp_path / "one"), _outputs(tmp_path / "three")
    assert sorted(one) == [p.stem for p in paths] and one.keys() == three.keys()
    for name, labels in one.items():
        np.testing.assert_array_equal(three[name], labels)
        record = json.loads((tmp_path / "three" / f"{name}.json").read_text())
        assert record["status"] == "ok" and record["outputs"]["tiff"] == f"{name}.tif"
    finished = [e["case_id"] for e in events if e["event"] == "case_finished"]
    assert sorted(finished) == [p.stem for p in paths]  # each once, in the order they finished
    assert (tmp_path / "three" / "_failed" / "broken.json").exists()


def test_jobs_are_chosen_by_model_and_threads(tiny_2d_model: Path,
                                              tiny_model_file: Path) -> None:
    two_d, three_d = Segmenter.from_file(tiny_2d_model), Segmenter.from_file(tiny_model_file)
    torch.set_num_threads(2)  # the autouse fixture restores the count
    assert LocalRunner().jobs_for(two_d) == 2
    assert LocalRunner().jobs_for(three_d) == 1  # volumes: all threads on one case
    assert LocalRunner(3).jobs_for(three_d) == 3
    torch.set_num_threads(1)
    assert LocalRunner().jobs_for(two_d) == 1
    with pytest.raises(ConfigError, match="positive integer"):
        LocalRunner(0)


def test_jobs_and_a_runner_together_are_refused(tmp_path: Path, tiny_2d_model: Path) -> None:
    _images(tmp_path / "in", 1)
    with pytest.raises(ConfigError, match="own workers"):
        run_batch([tmp_path / "in"], tiny_2d_model, tmp_path / "out", jobs=2,
                  runner=LocalRunner(2))
