"""A hostile batch through ``medseg-predict`` with the hippocampus model: good cases beside
damaged and absurd ones. It must finish in minutes, exit 1, print no traceback, segment every
good case and refuse every bad one with its reason.

The batch folder (made fresh under ``--work``):

* ``good_nifti/``: two MSD hippocampus validation images (NIfTI);
* ``series/`` and ``empty.dcm``: a real HippoCrop MR DICOM series, a zero-byte file beside it;
* ``incomplete_series/``: the same series with one slice's file emptied (a copy cut short:
  the reader refuses the folder rather than segment a series with a hole);
* ``text_in_iop/``: another HippoCrop series, one slice's ImageOrientationPatient text;
* ``bits_allocated_8/``: a third HippoCrop series, BitsAllocated 8 over 16-bit pixel data;
* ``complex.nii.gz`` and ``rgb.nii.gz``: complex64 and RGB24 NIfTI volumes;
* ``zeros_1024.nii.gz``: a 1024^3 volume of zeros (about 1 MB compressed, 1 GiB of voxels:
  exactly the reader's 2^30-voxel limit), which the compute guard must refuse.

Usage (repository root; the real data folder beside it)::

    .venv/bin/python benchmarks/hostile_batch.py [--work /tmp/medseg-hostile] \
        [--out benchmarks/results/hostile_batch.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from medseg.training.runtime import cpu_name

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HIPPOCROP = DATA / "hippocrop_dicom"
#: case id -> expected outcome (loose DICOM files are a case named after their folder: the
#: zero-byte ``empty.dcm`` in the batch root is case ``batch``)
EXPECTED = {
    "good_nifti_hippocampus_001": "ok", "good_nifti_hippocampus_014": "ok", "series": "ok",
    "batch": "failed", "incomplete_series": "failed", "text_in_iop": "failed",
    "bits_allocated_8": "failed", "complex": "failed", "rgb": "failed", "zeros_1024": "failed",
}
IOP = b"\x20\x00\x37\x00"


def _patch_ds_text(path: Path, tag: bytes, text: bytes) -> None:
    """Overwrite a DS value in an explicit-VR little-endian file with ``text``, as a
    hand-edited file would carry it (pydicom refuses to write such a value)."""
    data = bytearray(path.read_bytes())
    at = data.find(tag + b"DS")
    length = int.from_bytes(data[at + 6:at + 8], "little")
    data[at + 8:at + 8 + length] = text.ljust(length)[:length]
    path.write_bytes(bytes(data))


def make_batch(root: Path, cache: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    good = root / "good_nifti"
    good.mkdir()
    for case in ("hippocampus_001", "hippocampus_014"):
        shutil.copy(DATA / "msd_hippocampus" / "imagesTr" / f"{case}.nii.gz", good)
    shutil.copytree(HIPPOCROP / "Study1" / "13_HCropVolume", root / "series")
    (root / "empty.dcm").write_bytes(b"")
    incomplete = root / "incomplete_series"
    shutil.copytree(HIPPOCROP / "Study1" / "13_HCropVolume", incomplete)
    sorted(incomplete.iterdir())[7].write_bytes(b"")
    text = root / "text_in_iop"
    shutil.copytree(HIPPOCROP / "Study2" / "14_HCropVolume", text)
    _patch_ds_text(sorted(text.iterdir())[5], IOP, b"left\\posterior")
    bits = root / "bits_allocated_8"
    shutil.copytree(HIPPOCROP / "Study3" / "11_HCropVolume", bits)
    for f in sorted(bits.iterdir()):
        ds = pydicom.dcmread(f)
        ds.BitsAllocated = 8
        ds.save_as(f)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 40, 40))
    nib.save(nib.Nifti1Image((values + 1j * values).astype(np.complex64), np.eye(4)),
             str(root / "complex.nii.gz"))
    rgb = np.zeros((40, 40, 40), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = (values * 40 + 128).clip(0, 255)
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(root / "rgb.nii.gz"))
    zeros = cache / "zeros_1024.nii.gz"
    if not zeros.exists():  # 1 GiB of zeros, written once, gzip level 9: about 1 MB
        cache.mkdir(parents=True, exist_ok=True)
        nib.openers.Opener.default_compresslevel = 9
        nib.save(nib.Nifti1Image(np.zeros((1024, 1024, 1024), np.uint8), np.eye(4)),
                 str(zeros))
    shutil.copy(zeros, root / "zeros_1024.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg-hostile"))
    parser.add_argument("--out", type=Path, default=None, help="also write the lines here")
    args = parser.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    batch, out = args.work / "batch", args.work / "out"
    make_batch(batch, args.work / "cache")
    shutil.rmtree(out, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("medseg-predict")), "-m", "hippocampus",
               "-o", str(out), "--device", "cpu", "--log-json", str(args.work / "log.jsonl"),
               str(batch)]
    say(f"hostile batch, {time.strftime('%Y-%m-%d')}; CPU {cpu_name()}, {os.cpu_count()} cores,"
        f" load average {os.getloadavg()[0]:.1f} at start; inputs "
        f"{sum(f.stat().st_size for f in batch.rglob('*') if f.is_file()) / 1e6:.1f} MB "
        f"(zeros_1024.nii.gz {(batch / 'zeros_1024.nii.gz').stat().st_size / 1e6:.2f} MB)")
    say("command: medseg-predict -m hippocampus -o OUT --device cpu --log-json LOG BATCH")
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = json.loads((out / "_summary.json").read_text())
    say(f"exit code {done.returncode}; wall {wall:.1f} s; peak RSS {peak_mb:.0f} MB; "
        f"traceback in the output: {'Traceback' in done.stderr + done.stdout}; summary: "
        f"{summary['total']} cases, {summary['completed']} done, {len(summary['failed'])} "
        f"failed, state {summary['state']}")
    met = True
    for record in sorted(summary["records"], key=lambda r: r["case_id"]):
        case = record["case_id"]
        want = EXPECTED.get(case, "?")
        met &= want == record["status"]
        seconds = record["timings_s"].get("total", 0.0)
        what = (", ".join(f"{k} {v:.2f} mL" for k, v in record["volumes_ml"].items())
                if record["status"] == "ok" else f"{record['error_type']}: {record['error']}")
        say(f"  {case}: {record['status']} (expected {want}) in {seconds:.2f} s: {what}")
    met &= done.returncode == 1 and "Traceback" not in done.stderr and wall < 300
    met &= {r["case_id"] for r in summary["records"]} == set(EXPECTED)
    say(f"verdict: exit 1, no traceback, under 5 min, every good case segmented and every bad "
        f"one refused: {met}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
