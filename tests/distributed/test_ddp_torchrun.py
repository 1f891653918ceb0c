"""``medseg-train`` under ``torchrun``: 2 CPU processes (gloo) on a tiny synthetic dataset.

Two launches share one module fixture: (A) the library entry point stopped after 4 of 6
iterations, then resumed from the checkpoint files to the end (``ddp_worker.py``; each rank
reports its weights and the checkpoints it saved), and (B) the CLI, uninterrupted.
The config sets a time budget far beyond the run, so the ranks agree on rank 0's clock at every
iteration; a one-iteration warm-up keeps the learning rate independent of that clock (iteration
0 is the only one where the budget could set the schedule), so runs A and B stay comparable
bit for bit.
"""

from __future__ import annotations

import csv
from typing import Any

import pytest
import torch
import yaml
from distributed_helpers import HERE, torchrun, write_ball_dataset
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ITERS = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ddp")
    data = write_ball_dataset(root / "balls", 6)
    config = {"name": "balls", "output_dir": str(root / "run_a"), "seed": 3,
              "data": {"source": "msd", "path": str(data), "val_cases": ["ball4", "ball5"]},
              "patch_size": [16, 16, 16], "batch_size": 2, "base_filters": 4,
              "epochs": 2, "iters_per_epoch": ITERS // 2, "val_every": 1, "amp": "off",
              "device": "cpu", "num_threads": 1, "time_budget_min": 100, "warmup_iters": 1}
    cfg = root / "balls.yaml"
    cfg.write_text(yaml.safe_dump(config))
    worker = str(HERE / "ddp_worker.py")
    torchrun([worker, str(cfg), str(root / "reports"), "--stop", "4"])
    cli = torchrun(["-m", "medseg.cli.train", "-c", str(cfg), "-o", str(root / "run_b"), "-q"])
    reports = {phase: [torch.load(root / "reports" / f"{phase}_rank{r}.pt", weights_only=True)
                       for r in (0, 1)] for phase in ("stop", "resume")}
    return {"root": root, "config": cfg, "reports": reports, "cli_stdout": cli.stdout}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_both_ranks_end_with_identical_weights(runs: dict[str, Any]) -> None:
    for name, (r0, r1) in runs["reports"].items():
        assert r0["distributed"] and r0["world_size"] == 2, name
        assert _same(r0["weights"], r1["weights"]), f"{name}: ranks diverged"
    # what rank 0 saved is what both ranks hold (the file omits DynUNet's aliased tensors)
    saved = load_file(runs["root"] / "run_a" / "last.safetensors")
    held = runs["reports"]["resume"][1]["weights"]
    assert set(saved) <= set(held) and len(saved) > 10
    assert _same(saved, {k: held[k] for k in saved})


def test_only_rank0_writes_checkpoints_and_logs(runs: dict[str, Any]) -> None:
    for name, (r0, r1) in runs["reports"].items():
        assert r1["saved"] == [], f"{name}: rank 1 wrote checkpoints {r1['saved']}"
        assert "last" in r0["saved"] and "best" in r0["saved"], name
    for run in ("run_a", "run_b"):
        with open(runs["root"] / run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["kind"], r["iteration"]) for r in rows] == \
            [("train", "3"), ("val", "3"), ("train", "6"), ("val", "6")], run
    # rank 0 alone prints the result of the CLI
    assert runs["cli_stdout"].count('"iterations": 6') == 1


def test_resume_continues_exactly_where_it_stopped(runs: dict[str, Any]) -> None:
    stop, resume = runs["reports"]["stop"], runs["reports"]["resume"]
    assert [r["iterations"] for r in stop + resume] == [4, 4, ITERS, ITERS]
    state = torch.load(runs["root"] / "run_a" / "last_state.pt", weights_only=True)
    assert state["iteration"] == ITERS and len(state["rank_generators"]) == 2
    assert not torch.equal(*state["rank_generators"]), "ranks share one random stream"
    # interrupted after 4 iterations + resumed == the CLI's uninterrupted run, bit for bit
    a = load_file(runs["root"] / "run_a" / "last.safetensors")
    b = load_file(runs["root"] / "run_b" / "last.safetensors")
    assert _same(a, b)


def test_sharded_validation_equals_single_process_validation(runs: dict[str, Any]) -> None:
    from medseg.model_card import load_model
    from medseg.training import load_config
    from medseg.training.loop import prepare_data
    from medseg.training.runtime import pick_runtime
    from medseg.training.validate import validate

    config = load_config(runs["config"])
    runtime = pick_runtime(device="cpu", amp="off")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran; 2 threads crawl on a busy 2-core machine
    try:
        data = prepare_data(config, runtime)
        model, _ = load_model(runs["root"] / "run_b" / "last.safetensors")
        single = validate(model, data.val_cases, num_classes=data.plan.num_classes,
                          roi_size=data.plan.patch_size, overlap=config.val_overlap,
                          device=runtime.device, amp_dtype=None)
    finally:
        torch.set_num_threads(threads)
    state = torch.load(runs["root"] / "run_b" / "last_state.pt", weights_only=True)
    gathered = state["history"][-1]
    assert gathered["iteration"] == ITERS
    assert gathered["val_mean"] == pytest.approx(single["mean"], abs=1e-6)
    assert 0.0 < single["mean"] < 1.0
