"""The unattended batch runner behind ``medseg-predict`` (and, later, a Ray backend).

Safety rules, in the order they are applied:

* every output is written atomically (``medseg.io.atomic``): no half-written file is ever
  visible under its final name; temporaries a killed run left behind are removed at start;
* a case counts as finished only when its JSON record, written last, exists; a re-run skips
  finished cases made by the same model weights (unless ``overwrite``) and redoes the rest;
* a case that fails is recorded (``_failed/<case_id>.json``) with its reason and the run goes
  on; :attr:`BatchSummary.ok` is ``False`` if any case failed;
* no case holds the line: the engine refuses a case far beyond the model's training images
  before the network runs (:mod:`medseg.inference.guard`), and a case still running after
  ``case_timeout_s`` is cancelled through the engine's cancel path, recorded as failed, and
  the run goes on;
* ``_summary.json`` is rewritten atomically when the run starts and when each case starts and
  ends, so a run killed at any moment leaves a valid account of what finished.

:func:`predict_case` is the unit of work: a plain function of (case, segmenter, folder,
options), so a distributed worker can call it as it is.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import CancelledError, ConfigError, MedsegError
from medseg.inference.cases import CaseInput, discover_cases, unique_cases
from medseg.inference.guard import ComputeLimitError, format_duration
from medseg.inference.options import InferenceOptions, merge_options
from medseg.inference.records import (
    BatchSummary,
    CaseRecord,
    now_iso,
    read_record,
    write_record,
)
from medseg.io.atomic import exclusive_output, remove_stale_temporaries

if TYPE_CHECKING:
    from medseg.inference.engine import Prediction, Segmenter
    from medseg.inference.postprocess import PostprocessConfig
    from medseg.io.image import MedImage

logger = logging.getLogger(__name__)

#: Output formats and the file name suffix each gets after the case id: the label map as NIfTI
#: or DICOM SEG; the softmax probabilities (one channel per class, 4th axis) and the normalised
#: entropy (0 = certain, 1 = all classes equally likely) as NIfTI on the same grid, stored as
#: uint8 with a scale factor (values to within 1/255).
FORMATS: dict[str, str] = {"nifti": ".nii.gz", "dicom-seg": ".seg.dcm",
                           "probabilities": ".probabilities.nii.gz",
                           "uncertainty": ".uncertainty.nii.gz",
                           "tiff": ".tif", "png": ".png", "measurements": ".csv"}
#: ``"auto"``, the default, picks per case: a 2D image gets its label image as TIFF with the
#: image's rows and columns (ids kept, pixel size carried over), a volume gets NIfTI; both get
#: the measurements table (objects of a 2D instance result, lesions of a 3D result).
AUTO = "auto"
#: The formats that need the engine's probabilities.
PROBABILITY_FORMATS = ("probabilities", "uncertainty")

EventFn = Callable[[dict[str, Any]], None]

#: The default time limit per case of a batch (seconds): long enough that no real case of a
#: shipped model's kind comes near it, short enough that a case that crawls (a device slowed
#: to a fraction of its speed, an input the compute guard lets through at the edge of its
#: limit on a busy machine) holds a batch for half an hour, not a night. The slowest
#: shipped validation case (the synthetic liver CT, 80 windows) took 40 to 73 s in three runs
#: on a 2-core CPU with two trainings beside it (``benchmarks/results/compute_guard.txt``):
#: the limit is 25 to 45 times it. A case near the guard's limit (100x the largest training
#: image's windows) can take longer: the guard's estimate, in the failure's reason, says by
#: how much to raise it.
DEFAULT_CASE_TIMEOUT_S = 1800.0

#: Runs the cases that need predicting and yields each one's record as it finishes:
#: ``runner(cases, options, out_dir, load_segmenter)``. ``load_segmenter()`` builds the engine
#: (picklable, so it can be shipped to remote workers, which then call :func:`predict_case`).
CaseRunner = Callable[
    [Sequence[CaseInput], "BatchOptions", Path, Callable[[], "Segmenter"]], Iterator[CaseRecord]
]


@dataclass(frozen=True)
class BatchOptions:
    """Per-case options of a batch.

    Attributes:
        formats: Output formats, from ``FORMATS``.
        overwrite: Redo cases that already have a finished record.
        case_timeout_s: A case still running after this many seconds is cancelled at the
            engine's next window (its cancel path; also checked once the image is read, but
            a read that never returns is not interrupted), recorded as failed with the
            reason, and the batch goes on; ``None``: no limit. Default
            :data:`DEFAULT_CASE_TIMEOUT_S`.
    """

    formats: tuple[str, ...] = (AUTO,)
    overwrite: bool = False
    case_timeout_s: float | None = DEFAULT_CASE_TIMEOUT_S

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS and f != AUTO]
        if unknown or not self.formats:
            raise ConfigError(f"unknown output format(s) {unknown or '(none given)'}; choose from "
                              f"{', '.join(FORMATS)}")
        limit = self.case_timeout_s
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or not 0 < limit < float("inf")):
            raise ConfigError(f"case timeout must be a positive number of seconds (or none), "
                              f"got {limit!r}")


def output_name(case_id: str, fmt: str) -> str:
    return f"{case_id}{FORMATS[fmt]}"


def resolve_formats(formats: Sequence[str], ndim: int) -> list[str]:
    """The formats of one case: ``"auto"`` becomes ``tiff`` + ``measurements`` for a 2D image,
    ``nifti`` + ``measurements`` for a volume (see :data:`AUTO`)."""
    out: list[str] = []
    for fmt in formats:
        out.extend(((["tiff"] if ndim == 2 else ["nifti"]) + ["measurements"])
                   if fmt == AUTO else [fmt])
    return list(dict.fromkeys(out))


def _write_output(fmt: str, prediction: Prediction, image: MedImage, path: Path,
                  segmenter: Segmenter, *, lesions: list[dict[str, Any]] | None = None) -> None:
    """Write one output; ``lesions`` is the 3D result's lesion table, measured once per case
    for the record and written here as the ``measurements`` CSV."""

    from medseg import __version__
    from medseg.io import write_dicom_seg, write_nifti
    from medseg.io.nifti import write_nifti_unit_interval

    if fmt == "nifti":
        write_nifti(prediction.labels, path)
    elif fmt in ("tiff", "png"):
        from medseg.io.image2d import write_label_image_2d

        write_label_image_2d(prediction.labels, path)
    elif fmt == "measurements":
        from medseg.inference.measure import (
            LESION_COLUMNS,
            OBJECT_COLUMNS_2D,
            object_table_2d,
            write_csv,
        )

        if prediction.labels.meta.ndim == 2:
            rows = object_table_2d(prediction.labels.array[0], image.array[0],
                                   spacing=image.meta.spacing, unit=prediction.area_unit,
                                   instances=prediction.instances)
            write_csv(rows, OBJECT_COLUMNS_2D, path)
        else:
            write_csv(lesions or [], LESION_COLUMNS, path)
    elif fmt == "probabilities":
        assert prediction.probabilities is not None
        write_nifti_unit_interval(prediction.probabilities, path)
    elif fmt == "uncertainty":
        write_nifti_unit_interval(prediction.uncertainty(), path)
    elif fmt == "dicom-seg":
        card = segmenter.card
        write_dicom_seg(
            prediction.labels, image, path,
            label_names={k: v for k, v in card.label_names.items() if k != 0},
            label_colors=card.label_colors or None,
            algorithm_name=f"medseg {card.name}"[:64],
            algorithm_version=f"{__version__} card {card.hash()[:12]}",
        )


def _input_info(case: CaseInput, image: MedImage | None) -> dict[str, Any]:
    info = case.describe()
    if image is not None:
        prov = image.meta.provenance
        info.update(format=prov.format, modality=prov.modality,
                    study_instance_uid=prov.study_instance_uid,
                    series_instance_uid=prov.series_instance_uid,
                    frame_of_reference_uid=prov.frame_of_reference_uid)
    return info


def predict_case(case: CaseInput, segmenter: Segmenter, out_dir: str | Path,
                 options: BatchOptions, *,
                 should_cancel: Callable[[], bool] | None = None) -> CaseRecord:
    """Read, segment and write one case; its record is written last. Never raises for a case
    problem: the returned (and written) record says what failed and why. ``should_cancel`` is
    polled by the engine between windows (a cancelled case is recorded as failed and redone
    by the next run); so is the case's time limit (``options.case_timeout_s``).
    """
    from medseg.io import read_image

    out_dir = Path(out_dir)
    record = CaseRecord(case_id=case.case_id, status="failed", input=case.describe(),
                        started_at=now_iso(), provenance=segmenter.provenance())
    timings: dict[str, float] = {}
    start = time.perf_counter()
    limit = _CaseLimit(options.case_timeout_s, should_cancel)
    image = None
    try:
        if case.error:
            raise MedsegError(case.error)
        t = time.perf_counter()
        image = read_image(case.path, series_uid=case.series_uid)
        timings["read"] = time.perf_counter() - t
        record.input = _input_info(case, image)
        record.geometry = {"shape": list(image.spatial_shape),
                           "spacing_mm": list(image.meta.spacing)}
        if limit():
            raise CancelledError("prediction cancelled")
        prediction = segmenter.predict(
            image, return_probabilities=any(f in PROBABILITY_FORMATS for f in options.formats),
            should_cancel=limit)
        timings.update(prediction.timings)
        record.work = prediction.work.to_dict() if prediction.work is not None else None
        record.geometry["model_grid"] = prediction.model_grid
        record.fit = prediction.fit.to_dict()  # a strict engine has refused a misfit already
        if prediction.confidence is not None:
            record.confidence = prediction.confidence.to_dict()
        t = time.perf_counter()
        if prediction.labels.meta.ndim == 3 and not prediction.instances:
            from medseg.inference.measure import lesion_summary

            record.lesions, record.num_lesions = lesion_summary(
                prediction.labels, prediction.labels.meta.label_names)
            if record.num_lesions > len(record.lesions):
                logger.warning("%s: %d lesions found, the %d largest listed (a result this "
                               "fragmented is rarely what the model is for)", case.case_id,
                               record.num_lesions, len(record.lesions))
        for fmt in resolve_formats(options.formats, image.meta.ndim):
            if fmt == "dicom-seg" and image.meta.provenance.format != "dicom":
                record.skipped_outputs[fmt] = (
                    f"{case.path} is not a DICOM series ({image.meta.provenance.format}); a DICOM "
                    "SEG must reference DICOM source images")
                continue
            if fmt in ("tiff", "png") and image.meta.ndim != 2:
                record.skipped_outputs[fmt] = (f"{fmt} holds 2D label images and this result "
                                               "is 3D: use -f nifti or -f dicom-seg")
                continue
            name = output_name(case.case_id, fmt)
            _write_output(fmt, prediction, image, out_dir / name, segmenter,
                          lesions=record.lesions)
            record.outputs[fmt] = name
        timings["write"] = time.perf_counter() - t
        if not record.outputs:
            raise MedsegError(f"{case.path}: none of the requested formats applies: "
                              + "; ".join(record.skipped_outputs.values()))
        record.volumes_ml = prediction.volumes_ml
        record.areas, record.area_unit = prediction.areas, prediction.area_unit
        record.num_objects = prediction.num_objects
        record.status = "ok"
    except (KeyboardInterrupt, SystemExit):
        raise
    except CancelledError as exc:
        record.error, record.error_type = str(exc), type(exc).__name__
        if limit.timed_out:
            record.error_type = "CaseTimeout"
            record.error = limit.reason(case, segmenter, image, record)
    except ComputeLimitError as exc:
        record.error, record.error_type = str(exc), type(exc).__name__
        record.work = exc.estimate.to_dict()
    except MedsegError as exc:
        record.error, record.error_type = str(exc), type(exc).__name__
    except Exception as exc:  # unexpected: keep the batch going, keep the traceback in the log
        logger.exception("case %s failed unexpectedly", case.case_id)
        record.error = f"{case.path}: unexpected {type(exc).__name__}: {exc}"
        record.error_type = type(exc).__name__
    timings["total"] = time.perf_counter() - start
    record.timings_s = {k: round(v, 4) for k, v in timings.items()}
    write_record(out_dir, record)
    return record


class _CaseLimit:
    """The ``should_cancel`` of one case: the caller's, or the case's time limit passed."""

    def __init__(self, timeout_s: float | None,
                 should_cancel: Callable[[], bool] | None) -> None:
        self.timeout_s = timeout_s
        self.should_cancel = should_cancel
        self.start = time.monotonic()
        self.timed_out = False

    def __call__(self) -> bool:
        if self.timeout_s is not None and time.monotonic() - self.start > self.timeout_s:
            self.timed_out = True
            return True
        return self.should_cancel is not None and self.should_cancel()

    def reason(self, case: CaseInput, segmenter: Segmenter, image: MedImage | None,
               record: CaseRecord) -> str:
        """Why the case was cancelled, with the compute guard's estimate when there is one
        (also kept in ``record.work``)."""
        estimate = ""
        if image is not None:
            with contextlib.suppress(MedsegError):
                work = segmenter.estimate_work(image)
                record.work = work.to_dict()
                if work.seconds is not None:
                    estimate = (f" (the network's estimated share: "
                                f"{format_duration(work.seconds)} for {work.windows:,} windows)")
        return (f"{case.path}: cancelled after {time.monotonic() - self.start:.0f} s, over the "
                f"time limit per case of {self.timeout_s:g} s{estimate}; raise it with "
                "--case-timeout (0: none), or segment a region of the image")


def requested_options(model_path: Path | None, options: InferenceOptions,
                      segmenter: Segmenter | None = None) -> dict[str, Any]:
    """The settings that shape the outputs a run asks for, in the form its records keep them
    (``provenance.options``), to tell on resume whether a finished case was made with them.

    With a ``segmenter`` they are its own; otherwise they come from ``options`` and the model
    card (its default clean-up applies when the run asks for none). ``amp`` is compared only
    when set (``None`` is "as the machine prefers")."""
    if segmenter is not None:
        opts = segmenter.options()
        return {"overlap": opts["overlap"], "tta": opts["tta"],
                "keep_largest": opts["keep_largest"], "min_size_ml": opts["min_size_ml"],
                "fill_holes": opts["fill_holes"],
                "amp": opts["amp_dtype"] is not None,
                "object_diameter": opts["object_diameter"]}
    from medseg.inference.postprocess import PostprocessConfig

    post = options.postprocess
    diameter = options.object_diameter
    if model_path is not None and (not post.active or diameter is None):
        from medseg.model_card import read_model_card

        card = read_model_card(model_path)
        if not post.active:
            post = PostprocessConfig(**(card.postprocess or {}))
        if diameter is None:  # the card's default, as the engine takes it
            diameter = (card.instances or {}).get("object_diameter")
    # a record made before object_diameter existed has none: it matches a run without one
    wanted: dict[str, Any] = {"overlap": options.overlap, "tta": options.tta,
                              "keep_largest": post.keep_largest, "min_size_ml": post.min_size_ml,
                              "fill_holes": post.fill_holes,
                              "object_diameter": diameter}
    if options.amp is not None:
        wanted["amp"] = bool(options.amp)
    return wanted


def is_finished(out_dir: Path, case: CaseInput, options: BatchOptions,
                weights_sha256: str | None, wanted: dict[str, Any] | None = None) -> bool:
    """True if the case has a finished record, made by these weights with the ``wanted``
    options (see :func:`requested_options`), covering every requested format, whose output
    files all exist."""
    record = read_record(out_dir, case.case_id)
    if record is None or not record.ok:
        return False
    if weights_sha256 and record.provenance.get("weights_sha256") != weights_sha256:
        return False
    made = dict(record.provenance.get("options") or {})
    made["amp"] = made.get("amp_dtype") is not None
    made.setdefault("fill_holes", False)  # records made before the option existed
    if wanted and any(made.get(k) != v for k, v in wanted.items()):
        return False
    ndim = len(record.geometry.get("shape") or ()) or 3
    for fmt in resolve_formats(options.formats, ndim):
        if fmt in record.skipped_outputs:
            continue
        name = record.outputs.get(fmt)
        if name is None or not (out_dir / name).is_file():
            return False
    return True


class LocalRunner:
    """The in-process :data:`CaseRunner`: one engine, loaded at the first case, shared by
    ``jobs`` cases in flight (threads), records yielded as cases finish.

    A 2D model leaves a core idle for much of a case: reading, the fit check, instance
    post-processing and writing run on one core, and the convolutions of one small image do not
    keep two cores busy either. Two cases at a time, each with half the torch threads, keep
    both busy, with the same labels (measured in ``benchmarks/results/presets_2d.txt`` and
    ``runtimes_2d.txt``). A 3D model runs one case at a time with all threads: its convolutions
    use them all, and two volumes in flight would double the peak memory. A 2D model given
    volumes (the tumour model on FLAIR series) also runs two at a time; ``jobs=1`` bounds memory.

    Args:
        jobs: Cases in flight. ``None``: 2 for a 2D model on a CPU with at least 2 torch
            threads, else 1. Each job gets ``max(1, threads // jobs)`` torch threads for the
            run (restored afterwards).
        on_start: Called with each case just before it starts (in the thread that runs it);
            :func:`run_batch` lists the running cases in its summary with it.
    """

    def __init__(self, jobs: int | None = None, *,
                 on_start: Callable[[CaseInput], None] | None = None) -> None:
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
        self.jobs = jobs
        self.on_start = on_start

    def _predict(self, case: CaseInput, segmenter: Segmenter, out_dir: Path,
                 options: BatchOptions, should_cancel: Callable[[], bool] | None = None
                 ) -> CaseRecord:
        if self.on_start is not None:
            self.on_start(case)
        return predict_case(case, segmenter, out_dir, options, should_cancel=should_cancel)

    def jobs_for(self, segmenter: Segmenter) -> int:
        """The cases in flight for ``segmenter`` (see the class)."""
        if self.jobs is not None:
            return self.jobs
        import torch

        small = segmenter.card.spatial_dims == 2 and segmenter.device.type == "cpu"
        return 2 if small and torch.get_num_threads() >= 2 else 1

    def __call__(self, cases: Sequence[CaseInput], options: BatchOptions, out_dir: Path,
                 load_segmenter: Callable[[], Segmenter]) -> Iterator[CaseRecord]:
        if not cases:
            return
        segmenter = load_segmenter()
        jobs = min(self.jobs_for(segmenter), len(cases))
        if jobs == 1:
            for case in cases:
                yield self._predict(case, segmenter, out_dir, options)
            return
        stop = threading.Event()  # an interrupt or early close cancels the running cases
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="medseg-case")

        def submit(case: CaseInput) -> Future[CaseRecord]:
            return pool.submit(self._predict, case, segmenter, out_dir, options,
                               stop.is_set)

        _share_threads(jobs)
        try:
            todo = iter(cases)
            running = {submit(case) for case in itertools.islice(todo, 2 * jobs)}
            while running:  # at most 2 x jobs queued
                done, running = wait(running, return_when=FIRST_COMPLETED)
                error = None  # outside a case's own handling (e.g. the output disk failed)
                for future in done:
                    if future.exception() is not None:
                        error = error or future.exception()
                        continue
                    yield future.result()
                    case = next(todo, None)
                    if case is not None:
                        running.add(submit(case))
                if error is not None:  # raised once the other finished cases are yielded
                    raise error
        finally:
            stop.set()
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            finally:
                _share_threads(jobs, release=True)


#: Runners that have split torch's process-wide thread count, and the count before the first.
_THREADS_LOCK = threading.Lock()
_THREADS_STATE: dict[str, int] = {"runners": 0, "before": 0}


def _share_threads(jobs: int, *, release: bool = False) -> None:
    """Give each of ``jobs`` cases ``threads // jobs`` torch threads while a runner is active;
    the count from before the first active runner comes back when the last one ends (torch's
    count is process-wide, and runners may overlap in one process)."""
    import torch

    with _THREADS_LOCK:
        state = _THREADS_STATE
        if release:
            state["runners"] -= 1
            if state["runners"] == 0:
                torch.set_num_threads(state["before"])
            return
        if state["runners"] == 0:
            state["before"] = torch.get_num_threads()
        state["runners"] += 1
        torch.set_num_threads(max(1, state["before"] // jobs))


def run_batch(
    inputs: Iterable[str | Path] | Sequence[CaseInput],
    model: str | Path,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = (AUTO,),
    overwrite: bool = False,
    inference: InferenceOptions | None = None,
    device: str | None = None,
    overlap: float | None = None,
    tta: bool | None = None,
    amp: bool | None = None,
    postprocess: PostprocessConfig | None = None,
    segmenter: Segmenter | None = None,
    runner: CaseRunner | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_event: EventFn | None = None,
    jobs: int | None = None,
    case_timeout_s: float | None = DEFAULT_CASE_TIMEOUT_S,
) -> BatchSummary:
    """Segment every case named by ``inputs`` into ``out_dir``; resumable and kill-safe.

    Args:
        inputs: Files, folders and manifests (see :func:`discover_cases`), or cases.
        model: Shipped model name or model file (loaded once, only if a case needs it).
        out_dir: Output folder (created).
        formats: ``"auto"`` (see :data:`AUTO`) or any of ``FORMATS``: ``"nifti"``,
            ``"dicom-seg"``, ``"probabilities"``, ``"uncertainty"``, ``"tiff"``/``"png"``
            (2D label images), ``"measurements"`` (CSV of objects or lesions).
        overwrite: Redo finished cases.
        inference: The inference settings (:class:`InferenceOptions`), built once by the caller
            and handed whole to every engine this run loads, local or on Ray workers.
        device, overlap, tta, amp, postprocess: Single settings over ``inference`` (``None``:
            not given).
        segmenter: An already loaded engine for the local runner (then ``model`` is only used
            to name it).
        runner: Where the cases that need predicting run (e.g.
            ``medseg.distributed.ray_backend.RayRunner``); default: in this process.
        progress: ``progress(cases_done, cases_total)``.
        on_event: Receives one JSON-ready dict per event (``run_started``, ``case_skipped``,
            ``case_finished``, ``case_failed``, ``run_finished``), e.g. for a JSON-lines log.
        jobs: Cases in flight in this process when no ``runner`` is given (see
            :class:`LocalRunner`; ``None``: 2 for a 2D model on a multi-core CPU, else 1).
        case_timeout_s: Time limit per case in seconds (``None``: none; see
            :class:`BatchOptions` and :data:`DEFAULT_CASE_TIMEOUT_S`).

    Returns:
        The run summary (also in ``out_dir/_summary.json``, rewritten as each case starts
        and ends).

    Raises:
        ModelError: The model cannot be found or loaded (no case can run).
        ConfigError: Unknown output format.
        MedsegError: An unreadable manifest.
        ImageWriteError: Another run is writing to ``out_dir`` (one run per output folder).
    """
    from medseg.inference.engine import Segmenter
    from medseg.model_card import file_sha256
    from medseg.models import resolve_model

    options = BatchOptions(formats=tuple(dict.fromkeys(formats)), overwrite=overwrite,
                           case_timeout_s=case_timeout_s)
    if runner is not None and jobs is not None:
        raise ConfigError("jobs sets the in-process runner; a given runner has its own workers")
    given = {"device": device, "overlap": overlap, "tta": tta, "amp": amp,
             "postprocess": postprocess}
    engine_options = merge_options(inference, **{k: v for k, v in given.items()
                                                         if v is not None})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_output(out_dir):  # one run per output folder: no lost records
        emit = on_event or (lambda event: None)
        summary = BatchSummary(out_dir=str(out_dir), started_at=now_iso(),
                               case_timeout_s=options.case_timeout_s)
        start = time.perf_counter()
        removed = remove_stale_temporaries(out_dir)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run", removed)
        items = list(inputs)
        cases = (unique_cases(items) if items and all(isinstance(c, CaseInput) for c in items)
                 else discover_cases(items))  # type: ignore[arg-type]
        cases = _outside(cases, out_dir)
        summary.total = len(cases)
        model_path = (segmenter.model_path if segmenter is not None and runner is None
                      else resolve_model(model))
        weights = file_sha256(model_path) if model_path is not None else None
        wanted = requested_options(model_path, engine_options,
                                   segmenter if runner is None else None)
        emit({"event": "run_started", "time": now_iso(), "cases": len(cases),
              "out_dir": str(out_dir), "model": str(model_path or model),
              "formats": list(options.formats)})

        pending = []
        for case in cases:
            if not options.overwrite and is_finished(out_dir, case, options, weights, wanted):
                summary.already_done += 1
                emit({"event": "case_skipped", "time": now_iso(), "case_id": case.case_id,
                      "reason": "already finished"})
            else:
                pending.append(case)
        if progress is not None:
            progress(summary.already_done, len(cases))
        if segmenter is not None and runner is None:
            load: Callable[[], Segmenter] = lambda: segmenter  # noqa: E731
        else:  # picklable, so a distributed runner can ship it to its workers
            load = functools.partial(Segmenter.from_file, model_path, engine_options)
        live = _LiveSummary(summary, start, pending=len(pending),
                            reports_starts=runner is None)
        try:
            for record in (runner or LocalRunner(jobs, on_start=live.started))(
                    pending, options, out_dir, load):
                live.finished(record)
                emit({"event": "case_finished" if record.ok else "case_failed",
                      "time": now_iso(), **_brief(record)})
                if progress is not None:
                    progress(summary.already_done + len(summary.records), len(cases))
        except BaseException:
            live.close("interrupted")
            raise
        live.close("finished")
        emit({"event": "run_finished", "time": now_iso(), "total": summary.total,
              "completed": summary.completed, "already_done": summary.already_done,
              "failed": len(summary.failed), "wall_s": summary.wall_s})
        return summary


class _LiveSummary:
    """Keeps ``_summary.json`` current: rewritten atomically now (the run's first account),
    when a case starts (it is listed in ``running``) and when it ends (counted, its brief
    record added), and at the end. Thread-safe (the local runner's jobs start cases in their
    own threads)."""

    def __init__(self, summary: BatchSummary, start: float, *, pending: int,
                 reports_starts: bool) -> None:
        self.summary = summary
        self.start = start
        self.lock = threading.Lock()
        summary.pending = pending
        summary.running = [] if reports_starts else None
        self._write()

    def _write(self) -> None:
        self.summary.wall_s = round(time.perf_counter() - self.start, 3)
        self.summary.write()

    def started(self, case: CaseInput) -> None:
        with self.lock:
            s = self.summary
            if s.running is not None:
                s.running.append(case.case_id)
                s.pending -= 1
            self._write()

    def finished(self, record: CaseRecord) -> None:
        with self.lock:
            s = self.summary
            if s.running is not None and record.case_id in s.running:
                s.running.remove(record.case_id)
            else:
                s.pending -= 1
            s.records.append(record)
            if record.ok:
                s.completed += 1
            else:
                s.failed[record.case_id] = record.error or "unknown error"
            s.provenance = s.provenance or record.provenance
            self._write()

    def close(self, state: str) -> None:
        with self.lock:
            self.summary.state = state
            self._write()


def _outside(cases: list[CaseInput], out_dir: Path) -> list[CaseInput]:
    """Leave out inputs found inside the output folder (a folder input that contains it would
    otherwise feed a re-run its own predictions)."""
    out = out_dir.resolve()
    kept = [c for c in cases if out not in (c.path.resolve(), *c.path.resolve().parents)]
    if len(kept) < len(cases):
        logger.warning("ignoring %d input(s) inside the output folder %s",
                       len(cases) - len(kept), out_dir)
    return kept


def _brief(record: CaseRecord) -> dict[str, Any]:
    return {"case_id": record.case_id, "status": record.status, "input": record.input,
            "outputs": record.outputs, "skipped_outputs": record.skipped_outputs,
            "error": record.error, "timings_s": record.timings_s,
            "volumes_ml": record.volumes_ml, "fit_level": record.fit.get("level"),
            "fit_warnings": record.fit_warnings}
