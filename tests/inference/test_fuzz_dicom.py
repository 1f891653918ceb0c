"""Damaged DICOM series through the batch runner: a clear one-line failure or a right answer.

A seeded generator damages small synthetic series in the ways real archives and hand edits do
(empty and truncated files, missing slices, text or NaN in numeric tags, BitsAllocated / Rows /
Columns that do not fit the pixel data, a slice split off by a damaged SeriesInstanceUID,
missing required tags, inconsistent orientation / spacing / position, duplicated slices, stray
non-DICOM files, a compressed transfer syntax over raw pixels). Every damaged folder goes
through :func:`medseg.inference.batch.run_batch` with a threshold "model" whose right answer is
known, and must give, per case, either a failure whose reason is one line from a medseg error
(no crash, no "unexpected" error, no hang) or labels and geometry equal to those of the undamaged
series.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from inference_helpers import ThresholdNet, threshold_card
from typer.testing import CliRunner

from medseg.cli.predict import app
from medseg.inference import Segmenter
from medseg.inference.batch import run_batch
from medseg.io import ImageMeta, MedImage, read_image, write_dicom_series

CASES = int(os.environ.get("MEDSEG_FUZZ_CASES", "210"))  # env: more cases, other seeds
#: Errors a damaged input may end in (MedsegError: a case refused at discovery).
EXPECTED_ERRORS = {"ImageReadError", "GeometryError", "ModelError", "MedsegError"}

IPP, IOP = b"\x20\x00\x32\x00", b"\x20\x00\x37\x00"
PIXEL_SPACING, SLICE_THICKNESS = b"\x28\x00\x30\x00", b"\x18\x00\x50\x00"


def patch_ds_value(path: Path, tag: bytes, text: bytes) -> None:
    """Overwrite a DS value in an explicit-VR little-endian file with ``text`` (padded to the
    value's own length), as a damaged or hand-edited file would carry it."""
    data = bytearray(path.read_bytes())
    at = data.find(tag + b"DS")
    assert at > 0, f"tag {tag!r} not found in {path}"
    length = int.from_bytes(data[at + 6:at + 8], "little")
    data[at + 8:at + 8 + length] = text.ljust(length)[:length]
    path.write_bytes(bytes(data))


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _source(rng: np.random.Generator) -> MedImage:
    """A small series-worth of int16 values around the threshold, on a random oblique grid."""
    angle = rng.uniform(-0.5, 0.5)
    c, s = np.cos(angle), np.sin(angle)
    meta = ImageMeta(spacing=tuple(rng.uniform(0.4, 3.0, 3).round(3)),
                     origin=tuple(rng.uniform(-50, 50, 3).round(2)),
                     direction=((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0)))
    shape = (int(rng.integers(8, 14)), int(rng.integers(8, 14)), int(rng.integers(5, 9)))
    return MedImage(rng.integers(-3, 4, (1, *shape)).astype(np.float32), meta)


def _damage(kind: str, files: list[Path], rng: np.random.Generator) -> None:
    """Damage one written series in place (``files`` in slice order)."""
    mid = files[int(rng.integers(1, len(files) - 1))]
    pick = files[int(rng.integers(len(files)))]
    if kind == "zero":
        pick.write_bytes(b"")
    elif kind == "truncate":
        data = pick.read_bytes()
        pick.write_bytes(data[:int(rng.integers(1, len(data) - 1))])
    elif kind == "missing_slice":
        mid.unlink()
    elif kind == "text_in_numeric":
        tag = [IPP, IOP, PIXEL_SPACING, SLICE_THICKNESS][int(rng.integers(4))]
        patch_ds_value(pick, tag, [b"abc", b"1\\x\\0", b"--", b"1e", b"\\\\"][int(rng.integers(5))])
    elif kind == "non_finite":
        tag = [IPP, IOP, PIXEL_SPACING][int(rng.integers(3))]
        patch_ds_value(pick, tag, [b"nan\\0\\0", b"inf\\1\\1", b"1\\-inf"][int(rng.integers(3))])
    elif kind == "bits_allocated":
        bits = [8, 32, 12, 0][int(rng.integers(4))]
        for f in (files if rng.random() < 0.5 else [pick]):
            _edit(f, lambda ds: setattr(ds, "BitsAllocated", bits))
    elif kind == "rows_columns":
        tag, delta = ["Rows", "Columns"][int(rng.integers(2))], int(rng.choice([-2, -1, 1, 3]))
        for f in (files if rng.random() < 0.5 else [pick]):
            _edit(f, lambda ds: setattr(ds, tag, max(1, getattr(ds, tag) + delta)))
    elif kind == "series_uid":
        _edit(mid, lambda ds: setattr(ds, "SeriesInstanceUID", ds.SeriesInstanceUID + ".9"))
    elif kind == "missing_tag":
        keyword = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                   "Columns", "PixelData"][int(rng.integers(6))]
        _edit(pick, lambda ds: delattr(ds, keyword))
    elif kind == "orientation":  # one slice turned, or not orthonormal
        iop = [[0, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0.8, 0.6], [1, 0, 0, 0, 2, 0]][int(rng.integers(3))]
        _edit(pick, lambda ds: setattr(ds, "ImageOrientationPatient", iop))
    elif kind == "pixel_spacing":
        _edit(pick, lambda ds: setattr(ds, "PixelSpacing",
                                       [float(v) * 1.5 for v in ds.PixelSpacing]))
    elif kind == "position":  # a middle slice moved along the stack by 30-70 % of a step
        step = float(np.linalg.norm(np.subtract(
            pydicom.dcmread(files[1]).ImagePositionPatient,
            pydicom.dcmread(files[0]).ImagePositionPatient)))
        shift = step * rng.uniform(0.3, 0.7)
        _edit(mid, lambda ds: setattr(ds, "ImagePositionPatient",
                                      [float(v) + shift * n for v, n in zip(
                                          ds.ImagePositionPatient,
                                          np.cross(np.asarray(ds.ImageOrientationPatient[:3],
                                                              float),
                                                   np.asarray(ds.ImageOrientationPatient[3:],
                                                              float)), strict=True)]))
    elif kind == "duplicate":
        shutil.copy(pick, pick.with_name("copy_" + pick.name))
    elif kind == "stray_file":
        junk = rng.integers(0, 256, int(rng.integers(10, 400)), dtype=np.uint8).tobytes()
        if rng.random() < 0.5:
            junk = bytes(128) + b"DICM" + junk  # a DICOM preamble over garbage
        (pick.parent / "stray").write_bytes(junk)
    elif kind == "transfer_syntax":
        data = pick.read_bytes()  # RLE Lossless announced over raw pixels (same UID length)
        assert b"1.2.840.10008.1.2.1\x00" in data
        pick.write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00", 1))
    else:  # pragma: no cover - the list below names every kind
        raise AssertionError(kind)


KINDS = ("zero", "truncate", "missing_slice", "text_in_numeric", "non_finite", "bits_allocated",
         "rows_columns", "series_uid", "missing_tag", "orientation", "pixel_spacing", "position",
         "duplicate", "stray_file", "transfer_syntax")


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001, ANN202 - signal handler
    raise _Hang


@pytest.mark.slow
def test_fuzzed_dicom_series_fail_cleanly_or_come_out_right(tmp_path: Path) -> None:
    rng = np.random.default_rng(int(os.environ.get("MEDSEG_FUZZ_SEED", "2026")))
    segmenter = Segmenter(ThresholdNet(), threshold_card(roi=[16, 16, 8]), device="cpu")
    outcomes: Counter[tuple[str, str]] = Counter()
    wrong: list[str] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(CASES):
            kind = KINDS[i % len(KINDS)]
            source = _source(rng)
            clean_dir, damaged_dir = tmp_path / f"{i}" / "clean", tmp_path / f"{i}" / "series"
            write_dicom_series(source, clean_dir)
            shutil.copytree(clean_dir, damaged_dir)
            files = sorted(damaged_dir.glob("*.dcm"), key=lambda p: int(
                pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
            _damage(kind, files, rng)
            reference = segmenter.predict(read_image(clean_dir))
            signal.alarm(60)  # a hang is a failure too
            try:
                summary = run_batch([damaged_dir], "threshold", tmp_path / f"{i}" / "out",
                                    formats=["nifti"], segmenter=segmenter)
            finally:
                signal.alarm(0)
            for reason in summary.failed.values():
                assert "\n" not in reason and "unexpected" not in reason, (kind, reason)
            for record in summary.records:
                if record.ok:
                    out = read_image(tmp_path / f"{i}" / "out" / record.outputs["nifti"])
                    same = (out.spatial_shape == reference.labels.spatial_shape
                            and out.meta.same_grid(reference.labels.meta)
                            and np.array_equal(out.array, reference.labels.array))
                    if not same:
                        wrong.append(f"case {i} ({kind}): 'ok' but differs from the clean series")
                    outcomes[(kind, "ok")] += 1
                else:
                    assert record.error_type in EXPECTED_ERRORS, (kind, record.error)
                    outcomes[(kind, record.error_type)] += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not wrong, wrong
    # every kind of damage was exercised, and the ones that cannot be read right were refused
    assert {k for k, _ in outcomes} == set(KINDS)
    for kind in ("zero", "truncate", "missing_slice", "text_in_numeric", "non_finite",
                 "bits_allocated", "rows_columns", "pixel_spacing", "position"):
        assert outcomes[(kind, "ok")] == 0, (kind, outcomes)
    json.dumps({f"{k}:{v}": n for (k, v), n in outcomes.items()})  # readable in a failure


def test_damaged_dicom_folders_fail_alone_with_one_line_reasons(tiny_model_file: Path,
                                                                tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    volume = MedImage(np.random.default_rng(5).normal(size=(1, 18, 17, 16)).astype("f4") * 100,
                      ImageMeta.identity(3))
    for name in ("good", "zero", "orientation", "position"):
        files = write_dicom_series(volume, inputs / name, series_number=1)
        if name == "zero":
            (inputs / name / "zero.dcm").write_bytes(b"")
        elif name == "orientation":  # ImageOrientationPatient 1\abc\0\0\1\0
            patch_ds_value(files[3], IOP, b"1\\abc\\0\\0\\1\\0")
        elif name == "position":
            patch_ds_value(files[0], IPP, b"x\\0\\0")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["-m", str(tiny_model_file), "-o", str(out), "--device",
                                      "cpu", "--quiet", str(inputs)])
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "_summary.json").read_text())
    assert {r["case_id"] for r in summary["records"] if r["status"] == "ok"} == {"good"}
    assert set(summary["failed"]) == {"zero", "orientation", "position"}
    for case, reason in summary["failed"].items():
        assert "\n" not in reason and "Traceback" not in reason, (case, reason)
    assert "empty (zero-byte)" in summary["failed"]["zero"]
    assert "unreadable header value" in summary["failed"]["orientation"]
    assert "unreadable header value" in summary["failed"]["position"]
    assert "Traceback" not in result.output
