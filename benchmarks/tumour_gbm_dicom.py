"""The tumour model on a real glioblastoma FLAIR DICOM series: one lesion, where, and a clean SEG.

Runs ``medseg-predict -m MODEL -f nifti -f dicom-seg -f measurements`` on
``../shared/data/gbm_flair_dicom/FLAIR_37623`` (512x512x24, 0.43 mm pixels, 6.5 mm apart,
oblique), then checks what a radiologist would: how many lesions and on which side of the
patient (LPS: +x is the patient's left), the DICOM SEG against dciodvfy (when installed), the
SEG decoded back onto the series equal to the NIfTI labels, and the NIfTI's geometry against
SimpleITK's reading of the series (a second library). Optionally draws the overlay picture.

Usage (repository root):
    .venv/bin/python benchmarks/tumour_gbm_dicom.py --model brain-flair-tumour \
        [--picture docs/images/gbm_flair_tumour_overlay.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from medseg.io import read_dicom_seg, read_image
from medseg.training.runtime import cpu_name

REPO = Path(__file__).resolve().parents[1]
SERIES = REPO.parent / "shared" / "data" / "gbm_flair_dicom" / "FLAIR_37623"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain-flair-tumour")
    parser.add_argument("--picture", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="medseg-gbm-"))
    cmd = [str(Path(sys.executable).with_name("medseg-predict")), "-q", "-m", args.model,
           "-f", "nifti", "-f", "dicom-seg", "-f", "measurements", "--threads",
           str(args.threads), "-o", str(out), str(SERIES)]
    rc = subprocess.run(cmd, check=False).returncode
    print(f"# {args.model} on the real glioblastoma FLAIR DICOM series (no labels): {SERIES.name}")
    print(f"# machine: {cpu_name()}; command: medseg-predict -q -m {args.model} -f nifti "
          "-f dicom-seg -f measurements -o OUT ../shared/data/gbm_flair_dicom/FLAIR_37623")
    print(f"exit code {rc}")
    record = json.loads(next(out.glob("*.json")).read_text()) if rc == 0 else {}
    for key in ("status", "timings_s", "volumes_ml", "confidence"):
        print(f"{key} {json.dumps(record.get(key))}")
    nifti = next(out.glob("*.nii.gz"))
    with open(next(out.glob("*.csv")), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    print(f"lesions: {len(rows)}")
    for r in rows:
        side = "left" if float(r["centroid_x_mm"]) > 0 else "right"
        print(f"  lesion {r['lesion']}: {float(r['volume_ml']):.1f} mL, slices "
              f"{r['first_slice']}-{r['last_slice']}, centroid LPS ({float(r['centroid_x_mm']):.1f}"
              f", {float(r['centroid_y_mm']):.1f}, {float(r['centroid_z_mm']):.1f}) mm: the "
              f"patient's {side} hemisphere")
    seg_file = next(out.glob("*.seg.dcm"))
    if shutil.which("dciodvfy"):
        v = subprocess.run(["dciodvfy", str(seg_file)], capture_output=True, text=True)
        errors = sum(1 for line in (v.stdout + v.stderr).splitlines() if line.startswith("Error"))
        print(f"dciodvfy {seg_file.name}: {errors} errors")
    else:
        print("dciodvfy not installed: SEG not validated")
    series = read_image(SERIES)
    labels = read_image(nifti)
    same = labels.meta.same_grid(series.meta, atol_mm=1e-3)
    seg = read_dicom_seg(seg_file, series)
    equal = np.array_equal(seg.array[0] > 0, labels.array[0] > 0)
    print(f"read back: NIfTI on the series grid: {same}; SEG decoded onto the series == NIfTI "
          f"labels: {equal} ({int((labels.array[0] > 0).sum())} voxels)")
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SERIES)))
    ref = reader.Execute()
    nii = sitk.ReadImage(str(nifti))
    print("second library (SimpleITK series vs the NIfTI): origin "
          f"{np.abs(np.subtract(ref.GetOrigin(), nii.GetOrigin())).max():.1e} mm, direction "
          f"{np.abs(np.subtract(ref.GetDirection(), nii.GetDirection())).max():.1e}, spacing "
          f"{np.abs(np.subtract(ref.GetSpacing(), nii.GetSpacing())).max():.1e} apart")
    if args.picture is not None:
        subprocess.run([sys.executable, str(REPO / "scripts" / "overlay_figure.py"), str(SERIES),
                        str(nifti), str(args.picture), "--slices", "4", "--downscale", "2"],
                       check=True)
        print(f"picture: {args.picture}")


if __name__ == "__main__":
    main()
