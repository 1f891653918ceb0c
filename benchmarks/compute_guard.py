"""The compute guard on every shipped model: its validation cases (none may be refused) and a
set of far too large inputs (each must be refused in under a second, before any window runs).

For each model: the windows of its largest training image (the reference), one window's
seconds on this CPU (the guard's calibration), each validation case's estimate (the cases the
model card's split holds back, read as the evaluation benchmarks read them:
``eval_model.py``'s MSD and 2D folders, ``eval_nuclei.py``'s images, ``eval_tumour.py``'s
patient volumes, the demo's seeded synthetic CT), the slowest validation case run for real,
the largest case the default limit lets through, and the too-large inputs given to
``Segmenter.predict`` (timed from the call to the refusal; the progress callback counts the
windows run).

Usage (repository root; the real data folder beside it)::

    .venv/bin/python benchmarks/compute_guard.py [--models hippocampus,nuclei] \
        [--out benchmarks/results/compute_guard.txt]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from medseg.inference import Segmenter
from medseg.inference.guard import ComputeLimitError, format_duration
from medseg.io import ImageMeta, MedImage, read_image
from medseg.models import list_models
from medseg.training.runtime import cpu_name

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def validation_cases(name: str, card) -> Iterator[tuple[str, MedImage]]:
    """The model's held-back validation cases, as its evaluation benchmark reads them (a
    model trained on every case after a cross-validation: all its patients)."""
    val = list(card.training.get("split", {}).get("val", []))
    if name == "hippocampus":
        for case in val:
            yield case, read_image(DATA / "msd_hippocampus" / "imagesTr" / f"{case}.nii.gz")
    elif name.startswith("isbi2012"):
        for case in val:
            yield case, read_image(DATA / "isbi2012_em" / "train" / "image" / f"{case}.png")
    elif name.startswith("nuclei"):
        for case in val:
            yield case[:12], read_image(DATA / "dsb2018_nuclei" / "images" / f"{case}.png")
    elif name.startswith("brain-flair-tumour"):
        from eval_tumour import patient_volume  # benchmarks/ is on sys.path

        if not val:  # trained on every patient (after cross-validation): all 48 patients
            val = sorted(p.name for p in (DATA / "lgg_flair").glob("TCGA_*"))
            for f in sorted((DATA / "lgg_flair_more" / "imagesTr").glob("*.nii.gz")):
                yield f.name.removesuffix(".nii.gz"), read_image(f)
        for case in val:
            volume, _ = patient_volume(DATA / "lgg_flair" / case, 1)
            yield case, MedImage(volume[None], ImageMeta.identity(3))
    elif name == "demo-liver-lesion":
        from medseg.demo.model import TRAIN_SEED_OFFSET, TrainingRecipe
        from medseg.demo.run import SIZES
        from medseg.demo.synthetic import make_ct_study

        recipe = TrainingRecipe()
        for i, case in enumerate(val):  # synthetic_008: the recipe's last, shorter volume
            index = int(case.rsplit("_", 1)[1])
            shape = (*recipe.shape[:2], recipe.val_slices)
            yield case, make_ct_study(shape, recipe.spacing, n_lesions=recipe.lesions_per_case,
                                      seed=TRAIN_SEED_OFFSET + index).image
            if i == len(val) - 1:
                size = SIZES["default"]
                yield "demo study", make_ct_study(size.study_shape, size.study_spacing,
                                                  seed=0).image
    else:
        raise SystemExit(f"no validation reader for model {name!r}")


def too_large_inputs(segmenter: Segmenter) -> Iterator[tuple[str, MedImage, bool]]:
    """``(label, image, too_large)``: inputs hundreds to thousands of times the model's largest
    training image, within the reader's 2^30-voxel limit (zeros, allocated lazily by the OS);
    ``too_large`` False for the 1024^3 volume at 1 mm where, on a coarser model grid, it is
    not (shown for what it costs)."""
    card = segmenter.card
    if card.spatial_dims == 3:
        spacing = tuple(card.target_spacing or (1.0, 1.0, 1.0))
        yield (f"1024^3 at {spacing[0]:g} mm (the model's grid)",
               MedImage(np.zeros((1, 1024, 1024, 1024), np.uint8),
                        ImageMeta.identity(3).replace(spacing=spacing)), True)
        if spacing != (1.0, 1.0, 1.0):
            yield ("1024^3 at 1 mm", MedImage(np.zeros((1, 1024, 1024, 1024), np.uint8),
                                              ImageMeta.identity(3)), False)
    elif card.fov_pixels:  # every slice costs one resampled window: only the count matters
        yield ("32x32 x 1,048,576 slices",
               MedImage(np.zeros((1, 32, 32, 1 << 20), np.uint8), ImageMeta.identity(3)), True)
    else:
        channels = card.network.in_channels
        for side in (20_000, 32_768):
            yield (f"{side:,}^2 px", MedImage(np.zeros((channels, side, side), np.uint8),
                                              ImageMeta.identity(2)), True)


def run_model(name: str, out: list[str]) -> dict:
    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    segmenter = Segmenter.from_file(name, device="cpu")
    card = segmenter.card
    say(f"== {name} ({card.spatial_dims}D, window {'x'.join(map(str, card.roi_size))}, "
        f"largest training image {'x'.join(f'{v:g}' for v in card.domain['extent']['max'])} "
        f"{card.domain.get('unit', 'mm')})")
    t = time.perf_counter()
    first_case = next(validation_cases(name, card))[1]
    segmenter.estimate_work(first_case)  # the calibration, once per model in this process
    calibration_s = time.perf_counter() - t
    rows = []
    for case, image in validation_cases(name, card):
        t = time.perf_counter()
        work = segmenter.estimate_work(image)
        rows.append((case, image, work, time.perf_counter() - t))
    first = rows[0][2]
    limit_s = first.max_work * first.reference_windows * first.seconds_per_window
    say(f"reference {first.reference_windows} windows; one window {first.seconds_per_window:.4f}"
        f" s on this CPU (calibration {calibration_s:.2f} s, once); the limit "
        f"({first.max_work:g}x) lets through up to "
        f"{first.max_work * first.reference_windows:,.0f} windows, about "
        f"{format_duration(limit_s)}")
    refused = [r for r in rows if r[2].refused]
    ratios = [r[2].ratio for r in rows]
    slowest = max(rows, key=lambda r: r[2].windows)
    say(f"validation: {len(rows)} case(s), refused {len(refused)}; work ratio min "
        f"{min(ratios):.3f} median {float(np.median(ratios)):.3f} max {max(ratios):.3f}; "
        f"estimate per case at most {max(r[3] for r in rows) * 1000:.1f} ms")
    t = time.perf_counter()
    prediction = segmenter.predict(slowest[1])
    actual = time.perf_counter() - t
    say(f"largest validation case {slowest[0]}: {slowest[2].windows} windows, estimated "
        f"{slowest[2].seconds:.2f} s of network, predicted for real in {actual:.2f} s "
        f"(infer {prediction.timings.get('infer', 0.0):.2f} s)")
    if name == "hippocampus":  # a whole-head series for the crop-trained model: it runs
        t2 = read_image(DATA / "hippocrop_dicom" / "Study3" / "37830-T2reg-78532")
        for label, box in (("whole", None), ("in a box", ((70, 130), (130, 210), (5, 10)))):
            work = segmenter.estimate_work(t2, region=box)
            say(f"also: whole-head T2 series {'x'.join(map(str, t2.spatial_shape))} "
                f"({label}): {work.windows:,} windows, {work.ratio:,.2f}x, "
                f"{'refused' if work.refused else 'runs'}, estimated "
                f"{format_duration(work.seconds)}")
    refusals = []
    for label, image, too_large in too_large_inputs(segmenter):
        work = segmenter.estimate_work(image)
        if not work.refused:  # within the limit: it would run (not here), say what it costs
            say(f"{'too large' if too_large else 'also'}: {label}: within the limit, "
                f"{work.windows:,} windows, {work.ratio:,.0f}x, estimated "
                f"{format_duration(work.seconds)}")
            refusals.append((not too_large, 0.0, 0))
            continue
        windows_run: list[int] = []
        t = time.perf_counter()
        try:
            segmenter.predict(image, progress=lambda done, total, seen=windows_run:
                              seen.append(done))
            was_refused = False
        except ComputeLimitError:
            was_refused = True
        elapsed = time.perf_counter() - t
        say(f"too large: {label}: {'refused' if was_refused else 'NOT refused'} by predict() in "
            f"{elapsed:.3f} s, windows run {len(windows_run)}; {work.windows:,} windows, "
            f"{work.ratio:,.0f}x, estimated {format_duration(work.seconds)}")
        refusals.append((was_refused, elapsed, len(windows_run)))
        del image
    return {"refused_val": len(refused), "limit_s": limit_s, "slowest_actual_s": actual,
            "too_large_ok": all(r and s < 1.0 and n == 0 for r, s, n in refusals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--out", type=Path, default=None, help="also write the lines here")
    args = parser.parse_args()
    lines: list[str] = []
    header = (f"compute guard benchmark, {time.strftime('%Y-%m-%d')}; CPU {cpu_name()}, "
              f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, float32 "
              f"weights (autocast as the engine picks), load average "
              f"{os.getloadavg()[0]:.1f} at start; command: {' '.join(sys.argv)}")
    print(header, flush=True)
    lines.append(header)
    results = {name: run_model(name, lines) for name in args.models.split(",")}
    every = results.values()
    verdict = (f"summary: validation cases refused {sum(r['refused_val'] for r in every)}; "
               "too-large inputs all refused in under 1 s before any window: "
               f"{all(r['too_large_ok'] for r in every)}; the slowest case the default limit "
               f"lets through: {format_duration(max(r['limit_s'] for r in every))} (estimate); "
               f"the slowest validation case: {max(r['slowest_actual_s'] for r in every):.1f} s"
               " (measured)")
    print(verdict, flush=True)
    lines.append(verdict)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
