"""The DDP helpers without a process group: per-rank case streams, resume states, env checks."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from medseg.distributed import ddp
from medseg.errors import ConfigError


def _positions(n: int, batch: int, world: int, iters: int, seed: int = 7) -> dict[int, int]:
    """Stream position -> case, as the ranks draw them over ``iters`` iterations."""
    out = {}
    for r in range(world):
        s = ddp.CaseStream(n, batch_size=batch, seed=seed, rank=r, world_size=world)
        for t in range(iters):
            for b, case in enumerate(s.batch(t)):
                out[(t * batch + b) * world + r] = case
    return out


@pytest.mark.parametrize(("n", "batch", "world"), [(7, 3, 2), (5, 2, 4), (10, 1, 3)])
def test_each_pass_is_split_disjointly_over_the_ranks(n: int, batch: int, world: int) -> None:
    iters = 12
    positions = _positions(n, batch, world, iters)
    assert sorted(positions) == list(range(iters * batch * world))  # no position drawn twice
    full_passes = len(positions) // n
    for p in range(full_passes):
        cases = [positions[g] for g in range(p * n, (p + 1) * n)]
        assert sorted(cases) == list(range(n)), f"pass {p} is not a permutation"
        by_rank: dict[int, set[int]] = {}
        for g in range(p * n, (p + 1) * n):
            by_rank.setdefault(g % world, set()).add(positions[g])
        for a in by_rank:
            for b in by_rank:
                assert a == b or not by_rank[a] & by_rank[b], f"pass {p}: ranks {a}, {b} overlap"
    counts = Counter(positions[g] for g in range(full_passes * n))
    assert set(counts.values()) == {full_passes}  # every case equally often


def test_stream_is_seeded_per_pass_and_stateless() -> None:
    a = ddp.CaseStream(9, batch_size=2, seed=1, rank=1, world_size=2)
    fresh = ddp.CaseStream(9, batch_size=2, seed=1, rank=1, world_size=2)  # a resumed run
    later = [a.batch(t) for t in range(20)]
    assert [fresh.batch(t) for t in range(19, -1, -1)][::-1] == later
    assert a.permutation(0).tolist() != a.permutation(1).tolist()
    other_seed = ddp.CaseStream(9, batch_size=2, seed=2, rank=1, world_size=2)
    assert [other_seed.batch(t) for t in range(20)] != later


def test_invalid_stream_is_rejected() -> None:
    with pytest.raises(ValueError, match="rank 2 of 2"):
        ddp.CaseStream(4, batch_size=1, seed=0, rank=2, world_size=2)


def test_single_process_helpers_are_trivial(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert not ddp.init_from_env(torch.device("cpu"))
    assert not ddp.is_distributed() and ddp.is_main_process()
    assert ddp.case_stream(5, batch_size=2, seed=0) is None
    assert ddp.from_main(1.5, 2) == (1.5, 2.0) and ddp.gather("x") == ["x"]
    model = torch.nn.Linear(2, 2)
    assert ddp.wrap(model) is model
    ddp.barrier()

    def fake_validate(model: torch.nn.Module, cases: list[object], **kw: object) -> dict:
        return {"cases": cases, **kw}

    cases = [SimpleNamespace(case_id="a")]
    assert ddp.validate_sharded(fake_validate, model, cases, num_classes=2) == \
        {"cases": cases, "num_classes": 2}


def test_world_size_without_torchrun_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT not set: "
                                          r"start distributed training with torchrun"):
        ddp.init_from_env(torch.device("cpu"))
    assert not ddp.is_main_process()


def _states(n: int) -> list[torch.Tensor]:
    return [torch.Generator().manual_seed(10 + i).get_state() for i in range(n)]


def test_each_rank_resumes_its_own_random_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _states(3)
    state = {"generator": saved[0], "rank_generators": saved, "iteration": 40}
    monkeypatch.setenv("WORLD_SIZE", "3")
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        assert torch.equal(ddp.generator_state(state, seed=0), saved[r])


def test_changed_world_size_gives_fresh_streams(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    saved = _states(2)
    state = {"generator": saved[0], "rank_generators": saved, "iteration": 40}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with caplog.at_level("WARNING"):
        assert torch.equal(ddp.generator_state(state, seed=0), saved[0])
    assert "written by 2 process(es), this run has 4" in caplog.text
    fresh = []
    for r in (1, 2, 3):
        monkeypatch.setenv("RANK", str(r))
        fresh.append(ddp.generator_state(state, seed=0))
        assert torch.equal(fresh[-1], ddp.generator_state(state, seed=0))  # deterministic
    assert not any(torch.equal(f, s) for f in fresh for s in saved)
    assert not torch.equal(fresh[0], fresh[1])
    # a single-process checkpoint (no per-rank states) resumes rank 0's stream unchanged
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert torch.equal(ddp.generator_state({"generator": saved[1]}, seed=0), saved[1])


def test_sharded_validation_merges_every_rank_in_case_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 2 of 3 with 2 validation cases has nothing to validate but gets the full result."""
    cases = [SimpleNamespace(case_id=c) for c in ("b", "a")]
    dice = {"b": {1: 0.5, 2: 0.25}, "a": {1: 1.0, 2: 0.75}}
    others = [{"b": dice["b"]}, {"a": dice["a"]}]  # what ranks 0 and 1 validated
    calls = []

    def fake_validate(model: object, shard: list[SimpleNamespace], **kw: object) -> dict:
        calls.append(shard)
        return {"per_case": {c.case_id: dice[c.case_id] for c in shard}}

    monkeypatch.setattr(ddp, "is_distributed", lambda: True)
    monkeypatch.setattr(ddp, "rank", lambda: 2)
    monkeypatch.setattr(ddp, "world_size", lambda: 3)
    monkeypatch.setattr(ddp, "gather", lambda local: [*others, local])
    result = ddp.validate_sharded(fake_validate, torch.nn.Identity(), cases, num_classes=3)
    assert calls == []  # an empty shard is not validated (no mean of nothing)
    assert list(result["per_case"]) == ["b", "a"]
    assert result["mean_dice"] == {1: 0.75, 2: 0.5} and result["mean"] == 0.625


def test_weighted_stream_draws_by_the_weights_and_resumes_the_same_sequence() -> None:
    weights = [0.1, 0.0, 0.9]
    streams = [ddp.CaseStream(3, batch_size=4, seed=3, rank=r, world_size=2, weights=weights)
               for r in range(2)]
    drawn = [c for t in range(300) for s in streams for c in s.batch(t)]
    counts = Counter(drawn)
    assert counts[1] == 0  # weight 0: never drawn
    assert counts[2] / len(drawn) == pytest.approx(0.9, abs=0.03)
    fresh = ddp.CaseStream(3, batch_size=4, seed=3, rank=1, world_size=2, weights=weights)
    assert [fresh.batch(t) for t in range(5)] == [streams[1].batch(t) for t in range(5)]
    # the ranks take different positions of one stream, not the same draws
    assert [streams[0].batch(t) for t in range(20)] != [streams[1].batch(t) for t in range(20)]
    with pytest.raises(ValueError, match="2 weights for 3 cases"):
        ddp.CaseStream(3, batch_size=1, seed=0, rank=0, world_size=1, weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="not all zero"):
        ddp.CaseStream(2, batch_size=1, seed=0, rank=0, world_size=1, weights=[0.0, 0.0])


@pytest.mark.parametrize(("code", "status", "stderr"), [(None, 0, ""), (0, 0, ""), (3, 3, ""),
                                                        ("bad config", 1, "bad config")])
def test_exit_process_flushes_and_keeps_the_exit_status(code: object, status: int,
                                                        stderr: str) -> None:
    """A finished distributed rank leaves with ``os._exit``: what it printed and logged (still
    buffered, as through a pipe) reaches the reader, and the exit status is SystemExit's."""
    script = ("import logging, sys\n"
              "from medseg.distributed import ddp\n"
              "logging.basicConfig(stream=sys.stderr, format='%(message)s')\n"
              "print('{\"iterations\": 6}')\n"
              "logging.getLogger('x').warning('logged before exit')\n"
              f"ddp.exit_process({code!r})\n"
              "print('never reached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == status
    assert done.stdout == '{"iterations": 6}\n'
    assert "logged before exit" in done.stderr and stderr in done.stderr
