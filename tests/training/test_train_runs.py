"""Few-iteration training runs on synthetic data (3D MSD layout, 2D PNG folders), and resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_data import tiny_config

from medseg.errors import ConfigError, DatasetError
from medseg.model_card import load_model, read_model_card
from medseg.training import DataConfig, train
from medseg.training.checkpoint import load_state


def test_3d_run_writes_checkpoints_card_and_logs(msd_dataset: Path, tmp_path: Path) -> None:
    data = DataConfig(source="msd", path=str(msd_dataset), val_cases=["case_004"])
    cfg = tiny_config(data, tmp_path / "run", patch_size=[16, 16, 24])
    result = train(cfg)
    assert result.iterations == 6
    model, card = load_model(result.best_path)
    assert card.label_names == {0: "background", 1: "shell", 2: "core"}
    assert card.roi_size == [16, 16, 24] and card.modality == "MR"
    assert card.target_spacing == [1.0, 1.0, 1.0]
    assert card.normalization.scheme == "zscore"
    assert card.training["split"] == {"train": [f"case_{i:03d}" for i in range(4)],
                                      "val": ["case_004"]}
    assert len(card.training["history"]) >= 1
    assert card.fingerprint["median_shape"] == [33, 34, 35]
    # the training domain every prediction's fit report checks against, from the 4 train cases
    assert card.domain is not None and card.domain["modality"] == "MR"
    assert card.domain["num_cases"] == 4 and card.domain["unit"] == "mm"
    assert set(card.domain["label_sizes"]) == {"shell", "core"}
    assert len(card.domain["intensity"]["min"]) == 5 and not card.domain["synthetic"]
    out = model(torch.zeros(1, 1, 16, 16, 24))
    assert out.shape == (1, 3, 16, 16, 24)
    with open(result.run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == ["train", "val", "train", "val"]
    assert 0.0 <= float(rows[-1]["dice_core"]) <= 1.0
    plan = json.loads((result.run_dir / "plan.json").read_text())
    assert plan["plan"]["batch_size"] == 2 and plan["split"]["val"] == ["case_004"]
    assert list((result.run_dir / "tb").iterdir()), "no TensorBoard events written"
    state = load_state(result.run_dir, "last")  # weights_only=True inside
    assert state["iteration"] == 6 and "optimizer" in state


def test_2d_run_learns_discs(folder2d_dataset: Path, tmp_path: Path) -> None:
    data = DataConfig(source="folder2d", path=str(folder2d_dataset), label_values={0: 1, 255: 0},
                      label_names={0: "background", 1: "disc"}, modality="EM",
                      val_cases=["5"])
    cfg = tiny_config(data, tmp_path / "run2d", patch_size=[32, 32], base_filters=8,
                      epochs=4, iters_per_epoch=15, val_every=4, lr=0.02,
                      augment={"flip_axes": [0, 1], "rot90": True})
    cfg = type(cfg).from_dict({**cfg.to_dict(), "augment": {"flip_axes": [0, 1], "rot90": True,
                                                           "elastic_prob": 0.3,
                                                           "elastic_magnitude": 2.0}})
    result = train(cfg)
    card = read_model_card(result.best_path)
    assert card.spatial_dims == 2 and card.label_names == {0: "background", 1: "disc"}
    assert result.best_metrics["val_dice"]["1"] > 0.7


def test_resume_continues_identically(msd_dataset: Path, tmp_path: Path) -> None:
    data = DataConfig(source="msd", path=str(msd_dataset), max_cases=4, val_fraction=0.25)
    straight = train(tiny_config(data, tmp_path / "straight", patch_size=[16, 16, 16]))
    cfg = tiny_config(data, tmp_path / "interrupted", patch_size=[16, 16, 16])
    first = train(cfg, stop_after_iterations=4)  # stops mid-epoch, like a kill after a save
    assert first.iterations == 4 and load_state(first.run_dir)["iteration"] == 4
    resumed = train(cfg, resume=True)
    assert resumed.iterations == 6
    a, b = load_file(str(straight.last_path)), load_file(str(resumed.last_path))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    sa, sb = load_state(straight.run_dir), load_state(resumed.run_dir)
    assert torch.equal(sa["generator"], sb["generator"])
    assert [h["val_mean"] for h in sa["history"]] == pytest.approx(
        [h["val_mean"] for h in sb["history"]], abs=1e-6)


def test_moving_average_is_saved_and_resumes_identically(msd_dataset: Path,
                                                          tmp_path: Path) -> None:
    """``ema_decay``: the checkpoint files hold the average of the weights (not the weights,
    which travel in the resume state), and an interrupted run resumes to the same average."""
    data = DataConfig(source="msd", path=str(msd_dataset), max_cases=4, val_fraction=0.25)
    straight = train(tiny_config(data, tmp_path / "straight", patch_size=[16, 16, 16],
                                 ema_decay=0.9))
    state = load_state(straight.run_dir)
    saved = load_file(str(straight.last_path))
    raw = state["raw_weights"]  # a state_dict: aliased tensors may be saved under other names
    common = saved.keys() & raw.keys()
    assert len(common) > len(saved) // 2
    assert any(not torch.equal(saved[k], raw[k]) for k in common)
    cfg = tiny_config(data, tmp_path / "interrupted", patch_size=[16, 16, 16], ema_decay=0.9)
    train(cfg, stop_after_iterations=4)
    resumed = train(cfg, resume=True)
    b = load_file(str(resumed.last_path))
    for k in saved:
        torch.testing.assert_close(saved[k], b[k], rtol=0, atol=0, msg=k)
    plain = tiny_config(data, tmp_path / "plain", patch_size=[16, 16, 16])
    train(plain, stop_after_iterations=2)
    with pytest.raises(ConfigError, match="moving average"):
        train(tiny_config(data, tmp_path / "plain", patch_size=[16, 16, 16], ema_decay=0.9),
              resume=True)


def test_moving_average_update() -> None:
    from medseg.training.loop import update_average

    avg, new = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = avg.weight.detach().clone()
    update_average(avg, new, 0.75)
    torch.testing.assert_close(avg.weight.detach(), 0.75 * before + 0.25 * new.weight.detach())
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_config(DataConfig(source="msd", path="x"), Path("unused"), ema_decay=1.0)


def test_resume_refuses_a_different_split(msd_dataset: Path, tmp_path: Path) -> None:
    data = DataConfig(source="msd", path=str(msd_dataset), max_cases=4, val_fraction=0.25)
    cfg = tiny_config(data, tmp_path / "r", patch_size=[16, 16, 16])
    train(cfg, stop_after_iterations=1)
    other = tiny_config(data, tmp_path / "r", patch_size=[16, 16, 16], seed=99)
    with pytest.raises(ConfigError, match="split differs"):
        train(other, resume=True)


def test_all_cases_without_validation(msd_dataset: Path, tmp_path: Path) -> None:
    """``val_fraction: 0`` trains on every case (the final model after cross-validation):
    no validation runs and the last checkpoint is the model."""
    data = DataConfig(source="msd", path=str(msd_dataset), max_cases=4, val_fraction=0.0)
    result = train(tiny_config(data, tmp_path / "all", patch_size=[16, 16, 16]))
    assert result.best_path == result.last_path and result.last_path.is_file()
    assert result.best_metrics == {}
    card = read_model_card(result.last_path)
    assert len(card.training["split"]["train"]) == 4 and card.training["split"]["val"] == []
    assert load_state(result.run_dir)["history"] == []
    explicit = DataConfig(source="msd", path=str(msd_dataset), max_cases=4, val_fraction=0.5,
                          val_cases=[])
    with pytest.raises(DatasetError, match="no validation cases"):
        train(tiny_config(explicit, tmp_path / "none", patch_size=[16, 16, 16]))
