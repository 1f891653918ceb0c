"""``data.stream``: prepared cases kept on disk and read when drawn train exactly as cases kept
in memory do."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from training_data import tiny_config

from medseg.model_card import read_model_card
from medseg.training import DataConfig, train
from medseg.training.case_store import StoredCase, store_case
from medseg.training.dataset import PreparedCase


def test_stored_case_reads_back_what_was_stored(tmp_path: Path) -> None:
    case = PreparedCase("a/b", torch.rand(1, 5, 7), torch.randint(0, 3, (1, 5, 7),
                                                                  dtype=torch.uint8),
                        {1: torch.tensor([[0, 1], [2, 3]]), 2: torch.tensor([[4, 6]])})
    stored = store_case(case, tmp_path, 3)
    assert isinstance(stored, StoredCase) and stored.folder.name == "00003-a_b"
    assert torch.equal(stored.image, case.image) and torch.equal(stored.label, case.label)
    assert stored.label.dtype == torch.uint8
    assert {k: v.tolist() for k, v in stored.class_locations.items()} == {
        1: [[0, 1], [2, 3]], 2: [[4, 6]]}


def test_streamed_run_equals_in_memory_run(folder2d_dataset: Path, tmp_path: Path) -> None:
    results = {}
    for stream in (False, True):
        data = DataConfig(source="folder2d", path=str(folder2d_dataset),
                          label_values={0: 1, 255: 0}, label_names={0: "background", 1: "disc"},
                          modality="EM", val_cases=["5"], stream=stream)
        cfg = tiny_config(data, tmp_path / f"run-{stream}", patch_size=[32, 32])
        results[stream] = train(cfg)
    same, streamed = results[False], results[True]
    assert (streamed.run_dir / "cases-0").is_dir()  # the cases waited on disk
    assert not (same.run_dir / "cases-0").exists()
    for a, b in zip(load_file(same.last_path).values(), load_file(streamed.last_path).values(),
                    strict=True):
        assert torch.equal(a, b)
    card_a, card_b = read_model_card(same.last_path), read_model_card(streamed.last_path)
    assert card_a.fingerprint == card_b.fingerprint
    assert card_a.domain == card_b.domain
    assert card_a.training["history"] == [
        {**h, "elapsed_s": card_a.training["history"][i]["elapsed_s"]}
        for i, h in enumerate(card_b.training["history"])]
