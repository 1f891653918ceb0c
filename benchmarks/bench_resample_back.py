"""End-to-end time of ``medseg-predict`` against its network time, where the result must come
back from the model's grid to the source grid, and where it need not.

Scenarios, each one ``medseg-predict`` call in its own process (as users run it):

* ``ct``: a synthetic CT-like NIfTI, 512x512x200 at 0.8x0.8x1.5 mm
  (``bench_inference.ct_like_volume``), through the shipped ``demo-liver-lesion`` model
  (2.5 mm grid: the result is resampled back onto 52 million voxels);
* ``hippocampus``: the first ``--hippocampus-cases`` volumes of MSD Hippocampus ``imagesTr``
  (sorted) through the shipped ``hippocampus`` model (native 1 mm: nothing to resample);
* ``tumour``: the glioblastoma FLAIR DICOM series through the shipped ``brain-flair-tumour``
  (a 2D model over a 3D volume, slice by slice; its in-plane rescaling is part of ``infer``).

Every scenario runs once per code tree given with ``--code LABEL=PATH`` (``PATH`` put first on
``PYTHONPATH``; ``LABEL=.`` is this checkout), e.g. the commit before the change checked out
with ``git worktree add /tmp/medseg-before <commit>``. Reported per scenario and code tree: the
sum of each stage over the cases from the run's own records (``_summary.json``), end-to-end /
infer, the process's peak RSS (``ru_maxrss`` of the child, from ``os.wait4``), and the voxel
agreement of each tree's labels with the first tree's.

Usage (repository root)::

    .venv/bin/python benchmarks/bench_resample_back.py --code before=/tmp/medseg-before \
        --code after=. | tee -a benchmarks/results/resample_back.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_inference import ct_like_volume

from medseg.io import ImageMeta, MedImage, read_image, write_nifti
from medseg.training.runtime import cpu_name

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STAGES = ("read", "preprocess", "infer", "resample", "postprocess", "fit", "write", "total")


def _ct_input(tmp: Path) -> list[Path]:
    path = tmp / "big.nii.gz"
    if not path.exists():
        meta = ImageMeta(spacing=(0.8, 0.8, 1.5), origin=(0.0, 0.0, 0.0),
                         direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
        write_nifti(MedImage(ct_like_volume()[None], meta), path)
    return [path]


def scenarios(args: argparse.Namespace, tmp: Path) -> dict[str, tuple[str, list[Path]]]:
    """``{name: (model, inputs)}`` of the scenarios asked for whose data exist."""
    out: dict[str, tuple[str, list[Path]]] = {}
    if "ct" in args.scenarios:
        out["ct"] = ("demo-liver-lesion", _ct_input(tmp))
    hippo = SHARED / "msd_hippocampus" / "imagesTr"
    if "hippocampus" in args.scenarios and hippo.is_dir():
        cases = sorted(p for p in hippo.glob("*.nii.gz") if not p.name.startswith("._"))
        out["hippocampus"] = ("hippocampus", cases[:args.hippocampus_cases])
    gbm = SHARED / "gbm_flair_dicom"
    if "tumour" in args.scenarios and (gbm / "FLAIR_37623").is_dir():
        out["tumour"] = ("brain-flair-tumour", [gbm / "FLAIR_37623"])
    return out


def run(code: Path, model: str, inputs: list[Path], out: Path, threads: int
        ) -> dict[str, Any]:
    """One ``medseg-predict`` process; its stage sums, peak RSS and exit code."""
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-c", "from medseg.cli.predict import main; main()", "-m", model,
           "-o", str(out), "-q", "--threads", str(threads), *map(str, inputs)]
    # run from inside the code tree: ``python -c`` puts the working directory first on sys.path
    proc = subprocess.Popen(cmd, env=env, cwd=code.resolve())
    _, status, usage = os.wait4(proc.pid, 0)
    summary = json.loads((out / "_summary.json").read_text())
    records = [r for r in summary["records"] if r["status"] == "ok"]
    sums = {s: sum(r["timings_s"].get(s, 0.0) for r in records) for s in STAGES}
    return {"rc": os.waitstatus_to_exitcode(status), "cases": len(records),
            "failed": len(summary["failed"]), "peak_rss_mb": usage.ru_maxrss / 1024,
            "stages": sums, "out": out,
            "outputs": {r["case_id"]: r["outputs"] for r in records}}


def agreement(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Fraction of voxels with equal labels over all cases both runs wrote."""
    same = total = 0
    for case, outputs in a["outputs"].items():
        if case not in b["outputs"]:
            continue
        la = read_image(a["out"] / _label_file(outputs)).array
        lb = read_image(b["out"] / _label_file(b["outputs"][case])).array
        same += int((la == lb).sum())
        total += la.size
    return same / total if total else float("nan")


def _label_file(outputs: dict[str, str]) -> str:
    for fmt in ("nifti", "dicom-seg"):
        if fmt in outputs:
            return outputs[fmt]
    raise KeyError(f"no label output among {sorted(outputs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", action="append", required=True,
                        help="LABEL=PATH of a code tree (repeat; the first is the reference)")
    parser.add_argument("--scenarios", nargs="+", default=["ct", "hippocampus", "tumour"],
                        choices=["ct", "hippocampus", "tumour"])
    parser.add_argument("--hippocampus-cases", type=int, default=52)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    codes = [(c.split("=", 1)[0], Path(c.split("=", 1)[1])) for c in args.code]
    print(f"# {__doc__.splitlines()[0]}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# cpu: {cpu_name()}; threads {args.threads}; load average before "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'scenario':12s} {'code':8s} {'cases':>5s} " + " ".join(f"{s:>8s}" for s in STAGES)
          + f" {'e2e/inf':>7s} {'peakMB':>7s} {'agree':>9s}")
    with tempfile.TemporaryDirectory(prefix="bench-resample-") as tmp_name:
        tmp = Path(tmp_name)
        for name, (model, inputs) in scenarios(args, tmp).items():
            first: dict[str, Any] | None = None
            for label, code in codes:
                result = run(code, model, inputs, tmp / f"{name}-{label}", args.threads)
                agree = agreement(first, result) if first is not None else 1.0
                first = first or result
                st = result["stages"]
                print(f"{name:12s} {label:8s} {result['cases']:5d} "
                      + " ".join(f"{st[s]:8.2f}" for s in STAGES)
                      + f" {st['total'] / max(st['infer'], 1e-9):7.3f} "
                      f"{result['peak_rss_mb']:7.0f} {agree * 100:8.4f}%"
                      + (f"  rc={result['rc']} failed={result['failed']}"
                         if result["rc"] or result["failed"] else ""), flush=True)
    print(f"# load average after {os.getloadavg()[0]:.1f}; stage columns are sums over the "
          "cases of each record's timings_s (seconds); agree = voxels with the same label as "
          "the first code tree's")


if __name__ == "__main__":
    main()
