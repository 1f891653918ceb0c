"""Turn command-line inputs (files, folders, manifests) into cases with safe, stable ids.

A case id names every output of a case, so it is built only from the input's path relative to
the root it was found under (plus a hash where needed), restricted to ``[A-Za-z0-9._-]``; DICOM
tag text (patient names, descriptions) never reaches a file name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".json")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff",
                   ".jpg", ".jpeg", ".bmp", ".dcm")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_ID_LENGTH = 100


@dataclass(frozen=True)
class CaseInput:
    """One image to segment.

    Attributes:
        case_id: Safe, stable identifier; every output file of the case starts with it.
        path: Image file or DICOM folder/file, as :func:`medseg.io.read_image` takes it.
        series_uid: SeriesInstanceUID to read from a DICOM folder holding several series.
        kind: ``"dicom"`` or ``"file"``.
        error: Why the input cannot be used (missing file, bad manifest row); the case is then
            recorded as failed without being read.
    """

    case_id: str
    path: Path
    series_uid: str | None = None
    kind: str = "file"
    error: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready identification of the input (for records and logs)."""
        return {"path": str(self.path), "series_uid": self.series_uid, "kind": self.kind}


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def safe_case_id(text: str, *, salt: str | None = None) -> str:
    """Restrict ``text`` to ``[A-Za-z0-9._-]`` (path separators become ``_``), never hidden,
    never empty, at most ``MAX_ID_LENGTH`` characters; ``salt`` appends a short hash of it.

    Examples:
        >>> safe_case_id("Study 1/../séries:3")
        'Study_1_.._s_ries_3'
        >>> safe_case_id("../../etc/passwd")
        'etc_passwd'
    """
    cleaned = _UNSAFE.sub("_", text.replace("\\", "/").replace("/", "_"))
    cleaned = re.sub(r"_+", "_", cleaned).strip("._-")
    suffix = f"-{short_hash(salt)}" if salt is not None else ""
    if not cleaned:
        cleaned = f"case-{short_hash(text)}"
    if len(cleaned) + len(suffix) > MAX_ID_LENGTH:
        keep = MAX_ID_LENGTH - len(suffix) - 9
        cleaned = f"{cleaned[:keep]}-{short_hash(cleaned)}"
    return cleaned + suffix


def _strip_image_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _relative_id(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    text = str(rel) if str(rel) != "." else path.name
    return _strip_image_suffix(text)


def _from_folder(folder: Path, root: Path) -> list[CaseInput]:
    from medseg.io import find_dicom_series, find_image_files

    cases = [CaseInput(_relative_id(f, root), f) for f in find_image_files(folder)]
    _warn_hidden(folder)
    damaged: list[tuple[Path, str]] = []  # a folder with an empty/damaged DICOM file fails alone
    series = find_dicom_series(folder, errors=damaged)
    per_folder: dict[Path, int] = {}
    for info in series:
        per_folder[info.folder] = per_folder.get(info.folder, 0) + 1
    for info in series:
        base = _relative_id(info.folder, root)
        several = per_folder[info.folder] > 1
        case_id = safe_case_id(base, salt=info.series_uid if several else None)
        cases.append(CaseInput(case_id, info.folder, info.series_uid, "dicom"))
    for bad, reason in damaged:
        cases.append(CaseInput(safe_case_id(_relative_id(bad, root)), bad, None, "dicom",
                               error=reason))
    if not cases:
        return [CaseInput(_relative_id(folder, root), folder,
                          error=f"{folder}: no DICOM series or image files found")]
    return cases


def _warn_hidden(folder: Path) -> None:
    """Hidden files (names starting with '.', such as '.scan.nii.gz' or '..nii.gz') are left
    out of a folder search, as the OS hides them; say so when they look like images."""
    from medseg.io.discovery import find_hidden_image_files

    hidden = find_hidden_image_files(folder)
    if hidden:
        names = ", ".join(str(p.relative_to(folder)) for p in hidden[:5])
        more = f" and {len(hidden) - 5} more" if len(hidden) > 5 else ""
        logger.warning("%s: skipped %d hidden image file(s) (name starts with '.'): %s%s; name "
                       "them explicitly to segment them", folder, len(hidden), names, more)


def _expand(path: Path, root: Path, *, case_id: str | None = None,
            series_uid: str | None = None) -> list[CaseInput]:
    """Cases for one file or folder; an explicit ``case_id`` names a single case."""
    from medseg.io import is_dicom_file

    if not path.exists():
        return [CaseInput(case_id or _relative_id(path, root), path, series_uid,
                          error=f"{path} does not exist")]
    if path.is_dir() and series_uid is None:
        found = _from_folder(path, root)
        if case_id is not None:
            if len(found) == 1:
                return [CaseInput(case_id, found[0].path, found[0].series_uid, found[0].kind,
                                  found[0].error)]
            return [CaseInput(safe_case_id(case_id, salt=str(c.path) + (c.series_uid or "")),
                              c.path, c.series_uid, c.kind, c.error) for c in found]
        return found
    kind = "dicom" if path.is_dir() or is_dicom_file(path) else "file"
    return [CaseInput(case_id or _relative_id(path, root), path, series_uid, kind)]


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV (header with a ``path`` column; optional ``case_id``, ``series_uid``) or a
    JSON list (of paths, or of objects with those keys).

    Raises:
        MedsegError: Unreadable manifest or one without paths.
    """
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "inputs" in data:
                data = data["inputs"]
            if not isinstance(data, list):
                raise MedsegError(f"manifest {path}: expected a JSON list of inputs")
            rows = [{"path": d} if isinstance(d, str) else d for d in data]
        else:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise MedsegError(f"manifest {path} cannot be read: {exc}") from exc
    bad = [i for i, r in enumerate(rows, 1) if not isinstance(r, dict) or not r.get("path")]
    if bad:
        raise MedsegError(f"manifest {path}: entries {bad[:10]} have no 'path'")
    return [{k: str(v).strip() for k, v in r.items() if v not in (None, "")} for r in rows]


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES


def discover_cases(inputs: Iterable[str | Path]) -> list[CaseInput]:
    """All cases named by ``inputs``: image files, folders (searched recursively for DICOM
    series and image files) and manifests; duplicates removed, colliding ids disambiguated.

    A manifest that cannot be read raises; an input that does not exist becomes a case with an
    ``error`` (recorded as failed, the others still run).

    Raises:
        MedsegError: Unreadable manifest.
    """
    cases: list[CaseInput] = []
    for item in inputs:
        path = Path(item).expanduser()
        if is_manifest(path):
            base = path.parent
            for row in read_manifest(path):
                entry = Path(row["path"]).expanduser()
                entry = entry if entry.is_absolute() else base / entry
                explicit = safe_case_id(row["case_id"]) if row.get("case_id") else None
                cases.extend(_expand(entry, base, case_id=explicit,
                                     series_uid=row.get("series_uid")))
        else:
            root = path if path.is_dir() else path.parent
            cases.extend(_expand(path, root))
    return unique_cases(cases)


def unique_cases(cases: Sequence[CaseInput]) -> list[CaseInput]:
    """``cases`` with each file or series once and case ids made safe and distinct (two cases
    with one id would write over each other's outputs)."""
    seen: set[tuple[str, str | None]] = set()
    unique: list[CaseInput] = []
    first_id: dict[tuple[str, str | None], str] = {}
    for c in cases:
        key = (str(c.path.resolve()), c.series_uid)
        if key not in seen:
            seen.add(key)
            first_id[key] = c.case_id
            unique.append(c)
        elif c.case_id != first_id[key]:
            logger.warning("%s is listed twice, as %r and %r; it is segmented once, as %r",
                           c.path, first_id[key], c.case_id, first_id[key])
    unique = [CaseInput(safe_case_id(c.case_id), c.path, c.series_uid, c.kind, c.error)
              for c in unique]
    counts: dict[str, int] = {}
    for c in unique:
        counts[c.case_id.lower()] = counts.get(c.case_id.lower(), 0) + 1
    return [
        CaseInput(safe_case_id(c.case_id, salt=f"{c.path.resolve()}|{c.series_uid or ''}"),
                  c.path, c.series_uid, c.kind, c.error)
        if counts[c.case_id.lower()] > 1 else c
        for c in unique
    ]
