"""The in-process runner with several cases in flight: same outputs as one at a time, cases
really overlap, a bad file still fails alone, an error or an early stop loses nothing silently,
torch's thread count comes back (also when runs overlap), and the automatic choice."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from inference_helpers import tiny_card
from PIL import Image

from medseg.errors import ConfigError
from medseg.inference import batch
from medseg.inference.batch import BatchOptions, LocalRunner, run_batch
from medseg.inference.cases import CaseInput
from medseg.inference.engine import Segmenter
from medseg.inference.records import CaseRecord
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


def _cases(tmp_path: Path, n: int) -> list[CaseInput]:
    return [CaseInput(f"c{i}", tmp_path / f"c{i}.png") for i in range(n)]


def test_two_jobs_overlap_on_half_the_threads_and_restore_them(
        tmp_path: Path, tiny_2d_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)  # the autouse fixture restores the count
    meeting = threading.Barrier(2, timeout=20)  # one case at a time would never meet it
    seen: list[int] = []

    def fake(case, segmenter, out_dir, options, *, should_cancel=None):  # noqa: ANN001, ANN202
        seen.append(torch.get_num_threads())
        meeting.wait()
        return CaseRecord(case_id=case.case_id, status="ok", input={})

    monkeypatch.setattr(batch, "predict_case", fake)
    seg = Segmenter.from_file(tiny_2d_model)
    records = list(LocalRunner()(_cases(tmp_path, 4), BatchOptions(), tmp_path, lambda: seg))
    assert sorted(r.case_id for r in records) == ["c0", "c1", "c2", "c3"]
    assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2


def test_an_error_outside_a_case_still_yields_the_others_and_restores_threads(
        tmp_path: Path, tiny_2d_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)

    def fake(case, segmenter, out_dir, options, *, should_cancel=None):  # noqa: ANN001, ANN202
        if case.case_id == "c1":
            raise OSError("disk full")  # e.g. the record could not be written
        return CaseRecord(case_id=case.case_id, status="ok", input={})

    monkeypatch.setattr(batch, "predict_case", fake)
    seg = Segmenter.from_file(tiny_2d_model)
    got: list[str] = []
    with pytest.raises(OSError, match="disk full"):
        for record in LocalRunner(2)(_cases(tmp_path, 2), BatchOptions(), tmp_path,
                                     lambda: seg):
            got.append(record.case_id)
    assert got == ["c0"] and torch.get_num_threads() == 2


def test_an_early_stop_cancels_the_running_cases(
        tmp_path: Path, tiny_2d_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    cancelled: list[str] = []

    def fake(case, segmenter, out_dir, options, *, should_cancel=None):  # noqa: ANN001, ANN202
        if case.case_id != "c0":
            while not should_cancel():  # a long case, polling as the engine does
                threading.Event().wait(0.01)
            cancelled.append(case.case_id)
        return CaseRecord(case_id=case.case_id, status="ok", input={})

    monkeypatch.setattr(batch, "predict_case", fake)
    seg = Segmenter.from_file(tiny_2d_model)
    run = LocalRunner(2)(_cases(tmp_path, 6), BatchOptions(), tmp_path, lambda: seg)
    assert next(run).case_id == "c0"
    run.close()  # as a Ctrl-C in the consumer does
    assert cancelled and set(cancelled) <= {"c1", "c2", "c3", "c4", "c5"}
    assert len(cancelled) <= 2 and torch.get_num_threads() == 2  # queued ones never started


def test_overlapping_runs_restore_the_count_from_before_the_first(tmp_path: Path,
                                                                  tiny_2d_model: Path) -> None:
    _images(tmp_path / "in", 4)
    torch.set_num_threads(2)
    seg = Segmenter.from_file(tiny_2d_model)
    cases = [CaseInput(p.stem, p) for p in sorted((tmp_path / "in").iterdir())]
    a = LocalRunner(2)(cases, BatchOptions(), tmp_path / "a", lambda: seg)
    b = LocalRunner(2)(cases, BatchOptions(), tmp_path / "b", lambda: seg)
    next(a), next(b)
    assert torch.get_num_threads() == 1
    list(a), list(b)
    assert torch.get_num_threads() == 2


def test_cli_refuses_jobs_with_ray(tmp_path: Path, tiny_2d_model: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli.predict import app

    _images(tmp_path / "in", 1)
    result = CliRunner().invoke(app, ["-m", str(tiny_2d_model), "-o", str(tmp_path / "o"),
                                      "--backend", "ray", "--jobs", "2", str(tmp_path / "in")])
    assert result.exit_code == 2 and "--jobs is for the local backend" in result.output
