"""Per-case JSON records and the run summary of a batch.

A case counts as finished only when its record ``<out>/<case_id>.json`` exists: the record is
written last, atomically, after every output file. Failed cases get a record under
``<out>/_failed/`` instead, so a re-run retries them. (Case ids never start with ``_``.)
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
FAILED_DIR = "_failed"
SUMMARY_NAME = "_summary.json"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class CaseRecord:
    """What happened to one case.

    Attributes:
        case_id: The case's safe id (prefix of its output files).
        status: ``"ok"`` or ``"failed"``.
        input: Input identification: path, series UID, format, study/series UIDs, modality.
        outputs: ``{format: file name}`` of the outputs written (relative to the output folder).
        skipped_outputs: ``{format: reason}`` for requested formats that do not apply.
        timings_s: Seconds per stage: read, preprocess, infer, resample, postprocess, write,
            total.
        volumes_ml: Volume of each named label in mL (3D inputs).
        areas: Area of each named label (2D inputs), in ``area_unit`` (``px^2`` when the
            image has no pixel size, ``um^2`` / ``mm^2`` when it has).
        area_unit: Unit of ``areas``.
        num_objects: Objects found by an instance model.
        lesions: One row per connected lesion of a 3D result (volume in mL, slice range,
            largest in-plane diameter in mm, centroid in patient LPS mm); see
            :func:`medseg.inference.measure.lesion_table`; the largest
            ``MAX_LESION_ROWS`` only.
        num_lesions: How many lesions the 3D result has (more than ``lesions`` lists when it
            is fragmented into more than ``MAX_LESION_ROWS``).
        geometry: Shape and spacing of the input grid, and ``model_grid``: the grid the
            network ran on when the image was resampled for it (``None``: the input's own;
            see ``Prediction.model_grid``).
        fit: The fit report (:mod:`medseg.inference.fit`): ``{"level", "checks"}``, each check
            ``{"check", "level", "message"}``; ``level`` ``"warn"`` when the image does not
            look like the model's training images.
        confidence: How far the result can be trusted (:mod:`medseg.inference.confidence`):
            ``{"score", "threshold", "low", "message", "features"}``; ``low`` with a message
            such as "low confidence ...: review the outline of every lesion" when the score is
            below the model card's threshold; ``None`` when the model has no threshold and no
            probabilities were computed.
        work: The compute guard's estimate, made before the network ran
            (:class:`medseg.inference.guard.WorkEstimate`): ``windows`` on the model ``grid``,
            ``reference_windows`` of the largest training image, their ``ratio``,
            ``seconds_per_window`` measured on this device and ``seconds`` expected,
            ``max_work`` (the limit), ``forced``, ``refused``; also kept when the guard
            refused the case. ``None`` when the case failed before it was estimated.
        error: Why the case failed (a message a user can act on), else ``None``.
        error_type: Exception class name of the failure.
        provenance: medseg version, model name, model card hash, weights sha256, device,
            options.
        started_at: ISO-8601 UTC time the case started.
        finished_at: ISO-8601 UTC time the record was written.
    """

    case_id: str
    status: str
    input: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    skipped_outputs: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    areas: dict[str, float] = field(default_factory=dict)
    area_unit: str = ""
    num_objects: int | None = None
    lesions: list[dict[str, Any]] = field(default_factory=list)
    num_lesions: int | None = None
    geometry: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    confidence: dict[str, Any] | None = None
    work: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    record_version: int = RECORD_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def fit_warnings(self) -> list[str]:
        """The messages of the fit report's warnings (:mod:`medseg.inference.fit`)."""
        return [c["message"] for c in self.fit.get("checks", [])
                if c["level"] in ("warn", "refuse")]

    @property
    def warnings(self) -> list[str]:
        """What a reviewer should be told of a finished case: the fit report's warnings, then
        the low-confidence warning if the result scored below the card's threshold."""
        low = self.confidence is not None and self.confidence.get("low")
        return self.fit_warnings + ([str(self.confidence["message"])] if low else [])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def record_path(out_dir: Path, case_id: str, *, failed: bool = False) -> Path:
    return out_dir / FAILED_DIR / f"{case_id}.json" if failed else out_dir / f"{case_id}.json"


def write_record(out_dir: Path, record: CaseRecord) -> Path:
    """Write a case record atomically (the marker that the case is finished, if ``ok``)."""
    record.finished_at = now_iso()
    path = record_path(out_dir, record.case_id, failed=not record.ok)
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    if record.ok:
        record_path(out_dir, record.case_id, failed=True).unlink(missing_ok=True)
    return path


def read_record(out_dir: Path, case_id: str) -> CaseRecord | None:
    """The finished record of a case, or ``None`` if absent or unreadable."""
    path = record_path(out_dir, case_id)
    try:
        return CaseRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable record %s (%s); the case will be redone", path, exc)
        return None


def _brief_row(r: CaseRecord) -> dict[str, Any]:
    """A case as the run summary lists it."""
    return {"case_id": r.case_id, "status": r.status, "outputs": r.outputs, "error": r.error,
            "error_type": r.error_type, "timings_s": r.timings_s, "volumes_ml": r.volumes_ml,
            "areas": r.areas, "area_unit": r.area_unit, "num_objects": r.num_objects,
            "fit_level": r.fit.get("level"), "fit_warnings": r.fit_warnings,
            "confidence": (r.confidence or {}).get("score"),
            "low_confidence": bool((r.confidence or {}).get("low"))}


@dataclass
class BatchSummary:
    """The outcome of a :func:`medseg.inference.batch.run_batch` run, rewritten atomically
    (``_summary.json``) when the run starts, when a case starts and when it ends: a run killed
    at any moment leaves a valid summary of what finished.

    On disk, the finished records (``<case_id>.json``) are those of the ``already_done``
    cases, of the ``ok`` cases in ``records``, and possibly of cases in ``running`` (a run
    killed between a case's record and the next summary); the failed records
    (``_failed/<case_id>.json``) include those of ``failed``.

    Attributes:
        out_dir: Output folder.
        total: Cases found.
        completed: Cases predicted in this run.
        already_done: Cases skipped because a finished record existed (resume).
        failed: Cases that failed, as ``{case_id: reason}``.
        records: Records of the cases handled in this run (finished and failed).
        wall_s: Duration of the run in seconds.
        started_at: ISO-8601 UTC start time.
        provenance: Provenance of the model used (empty if nothing needed predicting).
        state: ``"running"`` while the run goes (also what a killed run leaves), then
            ``"finished"``; ``"interrupted"`` when an exception or Ctrl-C stopped it.
        running: Ids of the cases being predicted when the summary was written (``None``:
            the runner does not report them, e.g. Ray workers).
        pending: Cases of this run not started yet.
        updated_at: ISO-8601 UTC time of this rewrite.
        case_timeout_s: The time limit per case (``None``: none).
    """

    out_dir: str
    total: int = 0
    completed: int = 0
    already_done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    records: list[CaseRecord] = field(default_factory=list)
    wall_s: float = 0.0
    started_at: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    state: str = "running"
    running: list[str] | None = field(default_factory=list)
    pending: int = 0
    updated_at: str = ""
    case_timeout_s: float | None = None
    #: Each record's row as JSON, made once (the summary is rewritten as every case starts
    #: and ends: re-encoding thousands of rows each time would cost more than the cases).
    _rows_json: dict[int, str] = field(default_factory=dict, init=False, repr=False,
                                       compare=False)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        d = self._head()
        d["records"] = [_brief_row(r) for r in self.records]
        return d

    def _head(self) -> dict[str, Any]:
        """Every field but the records (in brief, not copied whole: the summary is rewritten
        after every case)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name != "records" and not f.name.startswith("_")}

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text: the run's fields indented, then ``records`` with one
        case per line."""
        head = self._head()
        rows = []
        for record in self.records:
            key = id(record)
            if key not in self._rows_json:
                self._rows_json[key] = json.dumps(_brief_row(record), sort_keys=True)
            rows.append(self._rows_json[key])
        text = json.dumps(head, indent=2, sort_keys=True)
        listed = ("[\n    " + ",\n    ".join(rows) + "\n  ]") if rows else "[]"
        return f'{text[:-2]},\n  "records": {listed}\n}}\n'

    def write(self) -> Path:
        """Rewrite ``_summary.json`` atomically (stamped ``updated_at``)."""
        self.updated_at = now_iso()
        path = Path(self.out_dir) / SUMMARY_NAME
        atomic_write_text(path, self.to_json())
        return path
