"""Dataset sources: turn a dataset layout into a list of image/label file pairs.

Four layouts are understood (see :class:`medseg.training.config.DataConfig`):

* ``msd``: the Medical Segmentation Decathlon / nnU-Net layout (``dataset.json`` listing
  ``imagesTr/`` and ``labelsTr/`` files);
* ``dicom``: one sub-folder per case holding a DICOM series plus a label map
  (``label.nii.gz``/``label.nii``/``label.nrrd`` or a DICOM SEG file ``seg.dcm``);
* ``folder2d``: matching file names in an image and a label folder (PNG/TIFF);
* ``manifest``: a CSV (``image,label[,case_id]`` columns) or JSON list of such records.

Nothing is read here except the index files: pairs are cheap and errors name the case.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import DatasetError
from medseg.metrics.evaluate import case_id_of, pair_by_case_id

if TYPE_CHECKING:
    from medseg.training.config import DataConfig

IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff")
DICOM_LABEL_NAMES = ("label.nii.gz", "label.nii", "label.nrrd", "label.mha", "seg.dcm")


@dataclass(frozen=True)
class CasePair:
    """One training case: an image and its label map.

    Attributes:
        case_id: Unique, stable identifier (used for the split and in error messages).
        image: Image file or DICOM series folder.
        label: Label map file (NIfTI/NRRD/PNG/TIFF or DICOM SEG).
        label_is_seg: True when ``label`` is a DICOM SEG object referencing ``image``.
        image_slices: For the ``slices`` layout: the 2D slice files stacked into the image, in
            slice order (``image`` is then their folder).
        label_slices: The matching mask slices.
        channels: Channels to keep from this case's image (``None``: the config's).
        label_values: This case's raw label value -> class mapping (``None``: the config's).
    """

    case_id: str
    image: Path
    label: Path
    label_is_seg: bool = False
    image_slices: tuple[Path, ...] = ()
    label_slices: tuple[Path, ...] = ()
    channels: tuple[int, ...] | None = None
    label_values: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class DatasetIndex:
    """The pairs of a dataset plus what its index file declares (if anything)."""

    pairs: list[CasePair]
    label_names: dict[int, str] | None = None
    modality: str | None = None


def index_dataset(source: str, path: str | Path, *, image_dir: str = "image",
                  label_dir: str = "label", label_suffix: str = "_mask") -> DatasetIndex:
    """List the case pairs of a dataset.

    Raises:
        DatasetError: the folder/manifest is missing, empty, or a listed file is missing.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path does not exist: {path}")
    if source == "msd":
        index = _index_msd(path)
    elif source == "dicom":
        index = DatasetIndex(_index_dicom(path))
    elif source == "folder2d":
        index = DatasetIndex(_index_folder2d(path / image_dir, path / label_dir))
    elif source == "manifest":
        index = DatasetIndex(_index_manifest(path))
    elif source == "slices":
        index = DatasetIndex(_index_slices(path, label_suffix))
    else:
        raise DatasetError(f"unknown dataset source {source!r}")
    if not index.pairs:
        raise DatasetError(f"{path}: the dataset is empty (no image/label pairs found)")
    ids = [p.case_id for p in index.pairs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DatasetError(f"{path}: duplicate case ids {dupes[:5]}")
    for pair in index.pairs:
        for what, f in (("image", pair.image), ("label", pair.label)):
            if not f.exists():
                raise DatasetError(f"case {pair.case_id}: {what} {f} does not exist")
    return index


def index_data(data: DataConfig) -> DatasetIndex:
    """The pairs of ``data.path`` followed by those of each ``data.more`` folder, each case
    carrying its folder's channel pick and label mapping (see
    :class:`~medseg.training.config.MoreData`).

    Raises:
        DatasetError: as :func:`index_dataset`, or a case id found in two folders.
    """
    index = index_dataset(data.source, data.path, image_dir=data.image_dir,
                          label_dir=data.label_dir, label_suffix=data.label_suffix)
    if not data.more:
        return index
    pairs = list(index.pairs)
    for more in data.more:
        extra = index_dataset(more.source, more.path, image_dir=more.image_dir,
                              label_dir=more.label_dir, label_suffix=more.label_suffix)
        channels = tuple(more.channels) if more.channels is not None else None
        values = tuple(sorted(more.label_values.items())) if more.label_values else None
        pairs += [replace(p, channels=channels, label_values=values) for p in extra.pairs]
    ids = [p.case_id for p in pairs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DatasetError(f"case ids {dupes[:5]} are in more than one data folder")
    return DatasetIndex(pairs, index.label_names, index.modality)


def _index_msd(root: Path) -> DatasetIndex:
    meta_file = root / "dataset.json" if root.is_dir() else root
    root = meta_file.parent
    if not meta_file.is_file():
        raise DatasetError(f"{root}: no dataset.json (expected the MSD / nnU-Net layout)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta_file}: not valid JSON: {exc}") from exc
    records = meta.get("training")
    if not isinstance(records, list):
        raise DatasetError(f"{meta_file}: no 'training' list of image/label records")
    pairs = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "image" not in rec or "label" not in rec:
            raise DatasetError(f"{meta_file}: training record {i} lacks 'image' and 'label'")
        image = (root / rec["image"]).resolve()
        pairs.append(CasePair(case_id_of(image), image, (root / rec["label"]).resolve()))
    labels = meta.get("labels")
    names = {int(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None
    modality = meta.get("modality")
    mod = str(modality.get("0")) if isinstance(modality, dict) and "0" in modality else None
    return DatasetIndex(pairs, names, _normalise_modality(mod))


def _normalise_modality(modality: str | None) -> str | None:
    if modality is None:
        return None
    m = modality.strip().upper()
    return {"MRI": "MR", "T1": "MR", "T2": "MR", "FLAIR": "MR"}.get(m, m)


def _index_dicom(root: Path) -> list[CasePair]:
    pairs = []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        labels = [case / n for n in DICOM_LABEL_NAMES if (case / n).exists()]
        if not labels:
            raise DatasetError(
                f"case {case.name}: no label map in {case} (expected one of {DICOM_LABEL_NAMES})"
            )
        series = case / "image" if (case / "image").is_dir() else case
        label = labels[0]
        pairs.append(CasePair(case.name, series, label, label_is_seg=label.suffix == ".dcm"))
    return pairs


def _index_folder2d(image_dir: Path, label_dir: Path) -> list[CasePair]:
    pairs = pair_by_case_id(image_dir, label_dir, suffixes=IMAGE_2D_SUFFIXES, primary="image",
                            other="label")
    return [CasePair(k, *pairs[k]) for k in sorted(pairs, key=_natural_key)]


def _natural_key(s: str) -> tuple[Any, ...]:
    """Sort key: runs of digits compare as numbers ("2" before "10"), text as text, and a
    number before text at the same position (hex ids mix both)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in _split_digits(s))


def _split_digits(s: str) -> list[str]:
    out, cur = [], ""
    for ch in s:
        if cur and ch.isdigit() != cur[-1].isdigit():
            out.append(cur)
            cur = ""
        cur += ch
    return out + ([cur] if cur else [])


def _index_slices(root: Path, label_suffix: str) -> list[CasePair]:
    """One case per sub-folder: slices ``<stem>_<n>.<ext>`` (``n`` = 1, 2, ... without gaps,
    sorted as numbers, never as text) each with its mask ``<stem>_<n><label_suffix>.<ext>``."""
    pairs = []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        slices: dict[int, tuple[Path, Path]] = {}
        for f in case.iterdir():
            stem, ext = f.name.rsplit(".", 1) if "." in f.name else (f.name, "")
            if "." + ext.lower() not in IMAGE_2D_SUFFIXES or stem.endswith(label_suffix):
                continue
            number = stem.rsplit("_", 1)[-1]
            if not number.isdigit():
                raise DatasetError(f"case {case.name}: slice file {f.name} does not end in "
                                   "_<number>")
            mask = case / f"{stem}{label_suffix}.{ext}"
            if not mask.is_file():
                raise DatasetError(f"case {case.name}: slice {f.name} has no mask {mask.name}")
            slices[int(number)] = (f, mask)
        if not slices:
            continue
        numbers = sorted(slices)
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
            raise DatasetError(f"case {case.name}: slices {missing[:5]} are missing")
        pairs.append(CasePair(case.name, case, case, image_slices=tuple(
            slices[n][0] for n in numbers), label_slices=tuple(slices[n][1] for n in numbers)))
    return pairs


def group_of_cases(group_file: str | Path, column: str, case_ids: list[str]) -> dict[str, str]:
    """``{case id: group}`` from a CSV with an ``image_id`` column and ``column``; a case the
    file does not list is its own group."""
    path = Path(group_file)
    if not path.is_file():
        raise DatasetError(f"group file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and ("image_id" not in rows[0] or column not in rows[0]):
        raise DatasetError(f"{path}: needs columns image_id and {column}")
    groups = {r["image_id"]: r[column] for r in rows}
    return {c: groups.get(c, c) for c in case_ids}


def _index_manifest(path: Path) -> list[CasePair]:
    base = path.parent
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
        if isinstance(records, dict):
            records = records.get("training", records.get("cases"))
        if not isinstance(records, list):
            raise DatasetError(f"{path}: expected a list of {{image, label}} records")
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
    else:
        raise DatasetError(f"{path}: a manifest must be a .csv or .json file")
    pairs = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not rec.get("image") or not rec.get("label"):
            raise DatasetError(f"{path}: record {i + 1} lacks 'image' and 'label'")
        image = (base / rec["image"]).resolve()
        label = (base / rec["label"]).resolve()
        case_id = str(rec.get("case_id") or case_id_of(image))
        pairs.append(CasePair(case_id, image, label, label_is_seg=label.suffix == ".dcm"))
    return pairs
