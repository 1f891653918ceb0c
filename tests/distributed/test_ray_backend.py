"""``medseg-predict --backend ray``: a 2-worker local Ray cluster on loopback vs the local run.

One module-scoped cluster (``ray.init`` takes seconds) and one runner whose actors are reused.
The cheap checks at the end need no cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from distributed_helpers import write_ball_dataset, write_tiny_model

from medseg.errors import ConfigError
from medseg.inference.batch import BatchOptions, run_batch
from medseg.inference.records import FAILED_DIR, read_record

GOOD = [f"ball{i}" for i in range(4)]
VOLATILE = ("timings_s", "started_at", "finished_at")


def _record(out: Path, case_id: str) -> dict[str, Any]:
    record = read_record(out, case_id)
    assert record is not None, f"{case_id}: no finished record in {out}"
    return {k: v for k, v in record.to_dict().items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 good cases + 1 corrupt file, a tiny model, and the local (1-thread) reference run."""
    root = tmp_path_factory.mktemp("raybatch")
    inputs = write_ball_dataset(root / "balls", 4) / "imagesTr"
    (inputs / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    model = write_tiny_model(root / "tiny.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker below
    try:
        local = run_batch([inputs], model, root / "local")
    finally:
        torch.set_num_threads(threads)
    assert local.completed == 4 and set(local.failed) == {"broken"}
    return {"root": root, "inputs": inputs, "model": model, "local": root / "local"}


@pytest.fixture(scope="module")
def runner() -> Any:
    ray = pytest.importorskip("ray")
    from medseg.distributed.ray_backend import RayRunner, start_local_ray

    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    start_local_ray(num_cpus=2)
    try:
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        with RayRunner(workers=2, threads_per_worker=1) as r:
            yield r
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_out(batch: dict[str, Path], runner: Any) -> tuple[Path, Any]:
    out = batch["root"] / "ray"
    return out, run_batch([batch["inputs"]], batch["model"], out, runner=runner)


@pytest.mark.slow
def test_ray_outputs_and_records_equal_the_local_run(batch: dict[str, Path],
                                                     ray_out: tuple[Path, Any],
                                                     runner: Any) -> None:
    out, summary = ray_out
    assert summary.total == 5 and summary.completed == 4 and set(summary.failed) == {"broken"}
    for case_id in GOOD:
        ours, ref = (nib.load(d / f"{case_id}.nii.gz") for d in (out, batch["local"]))
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj)), case_id
        np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-6)
        assert _record(out, case_id) == _record(batch["local"], case_id)
    assert sorted(set(runner.assignments.values())) == [0, 1], "one worker did nothing"
    assert len({pid for pid, _ in runner.workers_info} | {os.getpid()}) == 3


@pytest.mark.slow
def test_a_bad_case_is_recorded_while_the_others_finish(batch: dict[str, Path],
                                                        ray_out: tuple[Path, Any]) -> None:
    out, summary = ray_out
    failed = (out / FAILED_DIR / "broken.json").read_text()
    assert "broken.nii.gz cannot be read as NIfTI" in summary.failed["broken"]
    assert summary.failed["broken"] in failed
    assert read_record(out, "broken") is None  # never counted as finished
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in GOOD]
    assert not list(out.rglob(".medseg-tmp-*"))


@pytest.mark.slow
def test_resume_skips_finished_cases(batch: dict[str, Path], ray_out: tuple[Path, Any],
                                     runner: Any, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(ray_out[0], out)
    (out / "ball2.json").unlink()  # as if killed before ball2's record was written
    before = {c: (out / f"{c}.json").stat().st_mtime_ns for c in GOOD if c != "ball2"}
    runner.assignments.clear()
    summary = run_batch([batch["inputs"]], batch["model"], out, runner=runner)
    assert (summary.already_done, summary.completed, set(summary.failed)) == (3, 1, {"broken"})
    assert sorted(runner.assignments) == ["ball2", "broken"]
    assert before == {c: (out / f"{c}.json").stat().st_mtime_ns for c in before}
    assert _record(out, "ball2") == _record(batch["local"], "ball2")


@pytest.mark.slow
def test_a_dead_worker_fails_only_its_case_and_is_replaced(batch: dict[str, Path],
                                                           runner: Any, ray_out: Any,
                                                           tmp_path: Path) -> None:
    victim_pid = runner.workers_info[0][0]
    os.kill(victim_pid, signal.SIGKILL)
    runner.assignments.clear()
    out = tmp_path / "crash"
    summary = run_batch([batch["inputs"]], batch["model"], out, runner=runner)
    crashed = {c for c, reason in summary.failed.items() if "Ray worker" in reason}
    assert len(crashed) == 1 and runner.assignments[next(iter(crashed))] == 0
    assert "broken" in summary.failed and summary.completed == 3
    record = (out / FAILED_DIR / f"{next(iter(crashed))}.json").read_text()
    assert "the Ray worker processing it failed" in record
    again = run_batch([batch["inputs"]], batch["model"], out, runner=runner)  # new worker 0
    assert (again.already_done, again.completed, set(again.failed)) == (3, 1, {"broken"})


def test_importing_the_backend_does_not_import_ray() -> None:
    code = "import sys, medseg.distributed.ray_backend; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_missing_ray_and_bad_options_are_config_errors(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    from medseg.distributed.ray_backend import RayRunner, import_ray

    with pytest.raises(ConfigError, match="--workers must be at least 1, got 0"):
        RayRunner(workers=0)
    empty = RayRunner()  # nothing to predict: Ray is never imported nor started
    assert list(empty([], BatchOptions(), tmp_path, lambda: None)) == [] and empty._ray is None
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"needs Ray: pip install '\.\[distributed\]'"):
        import_ray()


def test_cli_rejects_ray_options_without_the_ray_backend(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli.predict import app

    result = CliRunner().invoke(app, [str(tmp_path), "-m", "x", "-o", str(tmp_path / "o"),
                                      "--workers", "2"])
    assert result.exit_code == 2
    assert "--workers and --ray-address need --backend ray" in result.output
