"""Batch inference on Ray: ``medseg-predict --backend ray --workers N``.

:class:`RayRunner` is a :data:`medseg.inference.batch.CaseRunner`: :func:`run_batch` still finds
the cases, skips finished ones, writes the summary and emits the events; the runner only spreads
the cases that need predicting over Ray actors. Each actor builds the engine once and calls the
batch runner's own per-case function (:func:`medseg.inference.batch.predict_case`), so outputs,
atomic writes and per-case records are exactly those of a local run.

Only small objects travel through Ray: a case (its path) to the actor, the case record back.
Images are read and label maps written by the actor, so every node needs the inputs, the model
file and the output folder at the same paths (shared storage on a multi-node cluster).

Failure isolation: :func:`predict_case` records a case problem instead of raising. If an actor
process dies (out of memory, a crash in a native library), its case is recorded as failed and a
fresh actor takes its place; the other cases go on.

Ray is imported only here, and only when a runner starts (``pip install ".[distributed]"`` from
the clone).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from medseg.inference.batch import BatchOptions
    from medseg.inference.cases import CaseInput
    from medseg.inference.engine import Segmenter
    from medseg.inference.records import CaseRecord

logger = logging.getLogger(__name__)

_SINGLE_MACHINE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the Ray backend needs Ray: pip install '.[distributed]' in "
                          "medseg's clone (the optional 'distributed' extra)") from exc
    return ray


def start_local_ray(*, num_cpus: int | None = None) -> None:
    """Start a Ray instance on this machine that listens on the loopback interface only.

    On Linux Ray binds its servers to the machine's network address unless it runs as a
    single-machine instance (its macOS/Windows mode). Ray has no public switch for that mode:
    it is the ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` variable (read when ``ray`` is imported, so
    the matching constant is set too), applied here only while the instance starts.

    Args:
        num_cpus: CPUs the instance offers (``None``: all of this machine's).
    """
    ray = import_ray()
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    before_env = os.environ.get(_SINGLE_MACHINE_VAR)
    before_const = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_SINGLE_MACHINE_VAR] = "0"
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1")
    finally:
        if before_env is None:
            os.environ.pop(_SINGLE_MACHINE_VAR, None)
        else:
            os.environ[_SINGLE_MACHINE_VAR] = before_env
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = before_const
    logger.info("started a local Ray instance at %s",
                ray.get_runtime_context().gcs_address)


class CaseWorker:
    """The body of one Ray actor: an engine loaded once, then one case per call.

    Args:
        load_segmenter: Builds the engine (called once, in the actor's process).
        threads: Torch CPU threads of this worker (``None`` keeps torch's default).
    """

    def __init__(self, load_segmenter: Callable[[], Segmenter], threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.error: str | None = None
        self.segmenter: Segmenter | None = None
        try:
            self.segmenter = load_segmenter()
        except Exception as exc:  # reported by ready(): no case can run without the engine
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> tuple[str | None, int, str]:
        """``(engine load error or None, process id, node address)``."""
        import socket

        return self.error, os.getpid(), socket.gethostname()

    def predict(self, case: CaseInput, out_dir: str, options: BatchOptions) -> CaseRecord:
        from medseg.inference.batch import predict_case

        assert self.segmenter is not None, "predict() called on a worker without an engine"
        return predict_case(case, self.segmenter, Path(out_dir), options)


class RayRunner:
    """Runs batch cases on Ray actors (a local cluster, or an existing one via ``address``).

    Use it as ``runner=`` of :func:`medseg.inference.batch.run_batch`; actors start at the first
    batch that has cases to predict and are reused by later batches with the same engine until
    :meth:`close` (or the end of a ``with`` block).

    Args:
        workers: Number of actors. ``None``: one per GPU when the cluster has GPUs, else one per
            ``threads_per_worker`` CPUs.
        address: Ray cluster to join (``"auto"``, ``"ray://head:10001"``, ``"host:6379"``).
            ``None``: join the Ray instance this process already runs, else start a local one
            (loopback only, no dashboard) that :meth:`close` stops.
        threads_per_worker: Torch CPU threads (and Ray CPUs reserved) per actor. ``None``: the
            cluster's CPUs divided among the workers (at least 1).
        gpus_per_worker: GPUs reserved per actor (fractions share a GPU). ``None``: 1 when the
            cluster has GPUs, else 0.
        num_cpus: CPUs of a local Ray instance started here (``None``: all of this machine's).

    Attributes:
        assignments: ``{case_id: worker index}`` of the cases this runner has run.
        workers_info: ``[(process id, host)]`` of the current actors.
        startup_s: Seconds the last start of the actors took (processes, imports, model load).
    """

    def __init__(self, *, workers: int | None = None, address: str | None = None,
                 threads_per_worker: int | None = None, gpus_per_worker: float | None = None,
                 num_cpus: int | None = None) -> None:
        for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise ConfigError(f"gpus per worker must be >= 0, got {gpus_per_worker}")
        self.workers = workers
        self.address = address
        self.threads_per_worker = threads_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.num_cpus = num_cpus
        self.assignments: dict[str, int] = {}
        self.workers_info: list[tuple[int, str]] = []
        self.startup_s = 0.0
        self._ray: ModuleType | None = None
        self._started_ray = False
        self._actors: list[Any] = []
        self._actor_class: Any = None
        self._loader_key: bytes | None = None
        self._load: Callable[[], Segmenter] | None = None
        self._threads = 1

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the actors, and the local Ray instance if this runner started it."""
        self._kill_actors()
        if self._ray is not None and self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

    def _kill_actors(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)  # type: ignore[union-attr]
        self._actors, self.workers_info, self._loader_key = [], [], None

    def _connect(self) -> ModuleType:
        ray = self._ray or import_ray()
        self._ray = ray
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address)
            else:
                start_local_ray(num_cpus=self.num_cpus)
                self._started_ray = True
        return ray

    def _plan(self, ray: ModuleType) -> tuple[int, int, float]:
        """``(workers, threads per worker, GPUs per worker)`` for the cluster's resources."""
        resources = ray.cluster_resources()
        cpus = max(1, int(resources.get("CPU", 1)))
        gpus = int(resources.get("GPU", 0))
        gpus_each = float(self.gpus_per_worker if self.gpus_per_worker is not None
                          else (1 if gpus else 0))
        threads = self.threads_per_worker
        if (threads or 1) > cpus or gpus_each > gpus:
            raise ConfigError(f"each worker asks for {threads or 1} CPU(s) and {gpus_each:g} "
                              f"GPU(s) but the Ray cluster has {cpus} CPU(s) and {gpus} GPU(s)")
        workers = self.workers
        if workers is None:
            workers = int(gpus / gpus_each) if gpus_each else max(1, cpus // (threads or 1))
        threads = threads or max(1, cpus // workers)
        if workers * threads > cpus or workers * gpus_each > gpus:
            logger.warning("%d workers x (%d CPU, %g GPU) exceed the cluster (%d CPU, %d GPU): "
                           "some workers wait until others finish", workers, threads, gpus_each,
                           cpus, gpus)
        return workers, threads, gpus_each

    def _start(self, load_segmenter: Callable[[], Segmenter]) -> None:
        """Start the actors (or keep those running the same engine) and wait until ready."""
        key = pickle.dumps(load_segmenter)
        if self._actors and key == self._loader_key:
            return
        self._kill_actors()
        ray = self._connect()
        workers, threads, gpus_each = self._plan(ray)
        start = time.perf_counter()
        self._actor_class = ray.remote(num_cpus=threads, num_gpus=gpus_each)(CaseWorker)
        self._load, self._threads = load_segmenter, threads
        self._actors = [self._new_actor() for _ in range(workers)]
        states = ray.get([a.ready.remote() for a in self._actors])
        errors = sorted({err for err, _, _ in states if err})
        if errors:
            self._kill_actors()
            raise ModelError(f"the Ray workers cannot load the model: {'; '.join(errors)}")
        self.workers_info = [(pid, host) for _, pid, host in states]
        self._loader_key = key
        self.startup_s = time.perf_counter() - start
        logger.info("%d Ray worker(s) ready in %.1f s (%d thread(s), %g GPU each): %s", workers,
                    self.startup_s, threads, gpus_each, self.workers_info)

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self._load, self._threads)

    # -- the CaseRunner protocol ---------------------------------------------------------------
    def __call__(self, cases: Sequence[CaseInput], options: BatchOptions, out_dir: Path,
                 load_segmenter: Callable[[], Segmenter]) -> Iterator[CaseRecord]:
        """Predict ``cases`` on the actors; yield each record as its case finishes."""
        if not cases:
            return
        self._start(load_segmenter)
        ray = self._ray
        assert ray is not None
        out = str(Path(out_dir).resolve())
        if self.address:  # workers of an existing cluster may run elsewhere / in another folder
            cases = [dataclasses.replace(c, path=Path(c.path).resolve()) for c in cases]
        queue = deque(cases)
        idle = list(range(len(self._actors)))[::-1]
        running: dict[Any, tuple[CaseInput, int]] = {}
        while queue or running:
            while queue and idle:
                index, case = idle.pop(), queue.popleft()
                ref = self._actors[index].predict.remote(case, out, options)
                running[ref] = (case, index)
                self.assignments[case.case_id] = index
            (ref,), _ = ray.wait(list(running), num_returns=1)
            case, index = running.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the worker process died
                record = self._worker_died(case, out_dir, exc)
                self._actors[index] = self._new_actor()
            except ray.exceptions.RayTaskError as exc:  # predict_case itself broke
                record = self._worker_died(case, out_dir, exc.cause or exc)
            idle.append(index)
            yield record

    @staticmethod
    def _worker_died(case: CaseInput, out_dir: Path, exc: BaseException) -> CaseRecord:
        from medseg.inference.records import CaseRecord, now_iso, write_record

        logger.error("case %s: the Ray worker failed: %s", case.case_id, exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        record = CaseRecord(case_id=case.case_id, status="failed", input=case.describe(),
                            started_at=now_iso(), error_type=type(exc).__name__,
                            error=f"{case.path}: the Ray worker processing it failed "
                                  f"({type(exc).__name__}: {first_line})")
        write_record(out_dir, record)
        return record
