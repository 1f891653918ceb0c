"""Data-parallel training under ``torchrun``: the pieces :func:`medseg.training.train` calls.

``torchrun`` (``torch.distributed.run``) starts one process per GPU on each node and sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. With those set,
:func:`init_from_env` joins the process group (NCCL on CUDA, gloo on CPU) and the training loop

* wraps the network in :class:`torch.nn.parallel.DistributedDataParallel` (:func:`wrap`),
* draws each rank's cases from a disjoint shard of a seeded permutation (:class:`CaseStream`),
* validates a shard of the validation cases per rank and gathers the Dice of every case, so all
  ranks take the same "best" decision (:func:`validate_sharded`),
* agrees on wall-clock decisions (time budget, schedule progress) by taking rank 0's clock
  (:func:`from_main`), since the ranks' clocks differ and a rank that stops alone deadlocks,
* writes checkpoints and logs on rank 0 only, saving every rank's random-generator state
  (:func:`gather`) so that a resumed run continues each rank's stream (:func:`generator_state`).

Every helper is a no-op (or the trivial answer) in a single-process run, so the loop calls them
unconditionally. Hand-written parts: PyTorch's ``DistributedSampler`` shards a map-style dataset
per epoch, but the loop draws random patches per iteration, not items of a dataset, so
:class:`CaseStream` applies the same rule (seeded permutation per pass, rank ``r`` takes positions
``r, r + W, ...``) to the loop's infinite stream of case draws, statelessly, so resume is exact.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (from the process group, else ``$RANK``, else 0)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (from the process group, else ``$WORLD_SIZE``, else 1)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0 (and in every single-process run); usable before :func:`init_from_env`."""
    return rank() == 0


def init_from_env(device: torch.device, *, timeout_min: float = 30.0) -> bool:
    """Join the ``torchrun`` process group if ``WORLD_SIZE > 1``; idempotent.

    Args:
        device: This rank's device (picked from ``LOCAL_RANK`` on CUDA machines); CUDA selects
            the NCCL backend, CPU gloo.
        timeout_min: How long a collective waits for the slowest rank (data preparation and
            rank 0's checkpoint writes happen between collectives).

    Returns:
        True when this process is one of several.

    Raises:
        ConfigError: ``WORLD_SIZE > 1`` but the rendezvous variables are missing (the script
            was not started by ``torchrun``), or ``torch.distributed`` is unavailable.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    dist = _dist()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return True
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start "
                          "distributed training with torchrun (see docs/SCALING.md)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    atexit.register(shutdown, together=False)  # unless the caller left the group already
    logger.info("rank %d/%d joined the %s process group (%s:%s, device %s)", dist.get_rank(),
                dist.get_world_size(), backend, os.environ["MASTER_ADDR"],
                os.environ["MASTER_PORT"], device)
    return True


def shutdown(*, together: bool) -> None:
    """Leave the process group before the interpreter exits (a no-op outside a distributed run).

    ``together`` (every rank finished its work): a barrier first, so no rank tears its gloo
    connections down while a peer still uses them; torn down at interpreter exit instead, a
    rank was seen to abort ("terminate called without an active exception") after a training
    that had finished and written everything. After an error: no barrier (a peer may never
    come), just the teardown.
    """
    dist = _dist()
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if together:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def exit_process(code: object) -> None:
    """End a rank of a finished distributed run now, after :func:`shutdown`: flush the streams
    and logging handlers, then ``os._exit`` with ``code`` (``SystemExit``'s code: None, an int
    or a message for stderr).

    Interpreter finalisation is skipped on purpose. Even after the barrier and
    ``destroy_process_group``, objects that still hold the gloo group (the DDP reducer in the
    frames of the exiting command) are destroyed during finalisation, where a rank was seen to
    abort with "terminate called without an active exception" (SIGABRT) after a training that
    had finished and written everything, and ``torchrun`` then reported the run as failed.
    Everything the run writes is closed before this point; ``atexit`` handlers do not run.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        sys.stderr.write(f"{code}\n")  # as SystemExit reports a message
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken pipe: nothing to lose
            stream.flush()
    logging.shutdown()
    os._exit(status)


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` in a distributed run (rank 0's weights are broadcast
    to all ranks here), else ``model`` itself."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist = _dist()
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def from_main(*values: float) -> tuple[float, ...]:
    """Rank 0's ``values`` on every rank (float64 broadcast), so decisions taken from a clock
    agree; the values themselves in a single process."""
    if not is_distributed():
        return tuple(float(v) for v in values)
    dist = _dist()
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return tuple(float(v) for v in t.cpu().tolist())


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` alone."""
    if not is_distributed():
        return [obj]
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def generator_state(state: dict[str, Any], *, seed: int) -> torch.Tensor:
    """The random-generator state this rank resumes with, from a saved training state.

    A checkpoint of a distributed run holds every rank's state (``rank_generators``); each rank
    takes its own. If the number of processes changed since (or the checkpoint came from a run
    that saved only rank 0's), rank 0 continues the saved stream and the other ranks start
    fresh streams derived from ``seed``, their rank and the iteration.
    """
    r, world = rank(), world_size()
    states = state.get("rank_generators")
    if states is not None and len(states) == world:
        return states[r]
    if world > 1 or (states is not None and len(states) > 1):
        logger.warning("the checkpoint was written by %s process(es), this run has %d: ranks "
                       "other than 0 continue with fresh random streams",
                       len(states) if states is not None else "an unknown number of", world)
    if r == 0:
        return state["generator"]
    fresh = np.random.SeedSequence([int(seed), r, int(state.get("iteration", 0))])
    return torch.Generator().manual_seed(int(fresh.generate_state(1, np.uint64)[0] >> 1)
                                         ).get_state()


def normalised_weights(weights: Sequence[float] | np.ndarray, num_cases: int) -> np.ndarray:
    """``weights`` as float64 probabilities summing to 1.

    Raises:
        ValueError: Not one finite, non-negative weight per case, or all zero.

    Examples:
        >>> normalised_weights([1, 3], 2).tolist()
        [0.25, 0.75]
    """
    w = np.asarray(weights, np.float64).ravel()
    if len(w) != num_cases:
        raise ValueError(f"{len(w)} weights for {num_cases} cases")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError("case weights must be finite, non-negative and not all zero")
    return w / w.sum()


class CaseStream:
    """Which training cases each rank draws, iteration by iteration.

    The whole run draws an endless stream of cases made of passes; pass ``p`` is a permutation
    of the cases seeded by ``(seed, p)`` (PyTorch's ``DistributedSampler.set_epoch`` rule).
    Position ``g`` of the stream goes to rank ``g mod W``, so within a pass the ranks draw
    disjoint cases and together see every case once. Rank ``r``'s ``k``-th draw is position
    ``k * W + r``; iteration ``t`` takes draws ``t * B .. t * B + B - 1``. The answer depends on
    the iteration only, so an interrupted run resumes the same sequence.

    With ``weights`` a pass is instead ``num_cases`` draws *with replacement* by those weights
    (seeded the same way): the ranks still take different positions of one stream, but a case
    can appear several times in a pass (or not at all), as in single-process weighted draws.

    Args:
        num_cases: Number of training cases.
        batch_size: Cases per iteration on each rank.
        seed: The run's seed.
        rank: This process's rank.
        world_size: Number of processes.
        weights: Relative weight of each case (normalised here); see above.

    Examples:
        >>> a = CaseStream(5, batch_size=2, seed=0, rank=0, world_size=2)
        >>> b = CaseStream(5, batch_size=2, seed=0, rank=1, world_size=2)
        >>> sorted(a.batch(0) + b.batch(0) + a.batch(1)[:1])
        [0, 1, 2, 3, 4]
    """

    def __init__(self, num_cases: int, *, batch_size: int, seed: int, rank: int,
                 world_size: int, weights: np.ndarray | None = None) -> None:
        if num_cases < 1 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid stream: {num_cases} cases, batch {batch_size}, "
                             f"rank {rank} of {world_size}")
        self.num_cases = num_cases
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.weights = None if weights is None else normalised_weights(weights, num_cases)
        self._passes: dict[int, np.ndarray] = {}

    def permutation(self, pass_index: int) -> np.ndarray:
        """The case order of pass ``pass_index``."""
        if pass_index not in self._passes:
            if len(self._passes) > 4:  # an iteration spans at most a few passes
                self._passes.clear()
            rng = np.random.default_rng([self.seed, pass_index])
            self._passes[pass_index] = (
                rng.permutation(self.num_cases) if self.weights is None
                else rng.choice(self.num_cases, self.num_cases, p=self.weights))
        return self._passes[pass_index]

    def batch(self, iteration: int) -> list[int]:
        """Case indices this rank trains on at ``iteration`` (0-based)."""
        out = []
        for b in range(self.batch_size):
            g = (iteration * self.batch_size + b) * self.world_size + self.rank
            out.append(int(self.permutation(g // self.num_cases)[g % self.num_cases]))
        return out


def case_stream(num_cases: int, *, batch_size: int, seed: int,
                weights: np.ndarray | None = None) -> CaseStream | None:
    """This rank's :class:`CaseStream` in a distributed run, ``None`` in a single process
    (where the loop keeps drawing cases at random with replacement, by the same weights)."""
    if not is_distributed():
        return None
    return CaseStream(num_cases, batch_size=batch_size, seed=seed, rank=rank(),
                      world_size=world_size(), weights=weights)


def validate_sharded(validate_fn: Callable[..., dict[str, Any]], model: torch.nn.Module,
                     cases: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
    """Run ``validate_fn(model, cases, **kwargs)`` with the cases split over the ranks.

    Rank ``r`` validates cases ``r, r + W, ...``; the per-case Dice of all ranks are gathered
    and the means recomputed in the original case order, so every rank returns the same result
    (a single-process call returns ``validate_fn``'s result as it is).

    Args:
        validate_fn: :func:`medseg.training.validate.validate` (or the same contract: returns
            ``per_case`` as ``{case_id: {label: dice}}``; ``num_classes`` in ``kwargs``).
        model: The unwrapped network (validation needs no gradient synchronisation).
        cases: All validation cases (objects with ``case_id``).
        **kwargs: Passed on to ``validate_fn``.
    """
    if not is_distributed():
        return validate_fn(model, cases, **kwargs)
    shard = list(cases)[rank()::world_size()]
    local = validate_fn(model, shard, **kwargs)["per_case"] if shard else {}
    merged: dict[str, dict[int, float]] = {}
    for part in gather(local):
        merged.update(part)
    per_case = {c.case_id: merged[c.case_id] for c in cases}
    labels = range(1, int(kwargs["num_classes"]))
    mean = {k: float(np.mean([d[k] for d in per_case.values()])) for k in labels}
    return {"mean_dice": mean, "mean": float(np.mean(list(mean.values()))), "per_case": per_case}


class Collectives:
    """The collective operations of one training run, behind one object.

    The training loop talks to the other ranks only through this: wrapping the model, the
    barrier, agreeing on rank 0's clock, gathering the random streams for a checkpoint,
    sharded validation, and the per-rank case stream. In a single process every call is the
    local no-op (or the value itself), so the loop has no distributed branches.
    """

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return wrap(model)

    def barrier(self) -> None:
        barrier()

    def from_main(self, *values: float) -> tuple[float, ...]:
        return from_main(*values)

    def gather(self, obj: Any) -> list[Any]:
        return gather(obj)

    def generator_state(self, state: dict[str, Any], *, seed: int) -> torch.Tensor:
        return generator_state(state, seed=seed)

    def case_stream(self, num_cases: int, *, batch_size: int, seed: int,
                    weights: np.ndarray | None = None) -> CaseStream | None:
        return case_stream(num_cases, batch_size=batch_size, seed=seed, weights=weights)

    def validate(self, validate_fn: Callable[..., dict[str, Any]], model: torch.nn.Module,
                 cases: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
        return validate_sharded(validate_fn, model, cases, **kwargs)
