"""The demo's JSON report and its human-readable summary (the CLI prints the summary)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from medseg.demo.run import DemoResult


def write_report(result: DemoResult, *, size: str, seed: int) -> Path:
    """Write ``result`` with the run's settings and library versions to its report path."""
    from medseg.model_card import library_versions, read_model_card

    card = read_model_card(result.model_path)
    data = {
        "medseg_demo_report": 1,
        "size": size,
        "seed": seed,
        "model": {"name": card.name, "card_sha256": card.hash(),
                  "target_spacing_mm": card.target_spacing, "roi_size": card.roi_size,
                  "trained_by_this_run": result.model_trained},
        "versions": library_versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        **result.to_dict(),
    }
    atomic_write_text(result.report_path, json.dumps(data, indent=2, default=str) + "\n")
    return result.report_path


def summary_text(result: DemoResult) -> str:
    """Where everything is, how well the prediction matches, and how to look at it."""
    ev = result.evaluation
    out = result.out_dir

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(out))
        except ValueError:
            return str(p)

    lines = [
        f"medseg demo finished in {result.timings_s.get('total', 0.0):.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in result.timings_s.items() if k != 'total')})",
        "",
        f"Output folder: {out}",
        f"  {rel(result.dicom_dir)}/  synthetic CT, DICOM series (the input)",
        f"  {rel(result.truth_path)}  true liver/lesion labels",
        f"  {rel(result.prediction_nifti)}  predicted labels (NIfTI)",
        f"  {rel(result.prediction_seg)}  predicted labels (DICOM SEG)"
        + ("" if result.seg_matches_nifti else "  [WARNING: differs from the NIfTI]"),
        f"  {rel(result.case_record)}  case record (timings, volumes, provenance)",
        f"  {rel(result.report_path)}  this report as JSON",
        f"Model: {result.model_path}" + (" (trained by this run)" if result.model_trained
                                         else ""),
        *_training_note(result),
        "",
        "Prediction vs. truth:",
        "  Dice " + ", ".join(f"{k} {v:.3f}" for k, v in ev.dice.items()),
        f"  lesions detected {ev.detected} of {len(ev.lesions)}, "
        f"false-positive lesions {ev.false_positives} ({ev.false_positive_ml:.2f} mL)",
        f"  total lesion volume {ev.predicted_total_ml:.2f} mL predicted, "
        f"{ev.true_total_ml:.2f} mL true",
    ]
    for m in ev.lesions:
        lines.append(
            f"  lesion {m.index} at {_mm(m.centre_mm)}: {m.true_ml:.2f} mL true, "
            f"{m.predicted_ml:.2f} mL predicted, Dice {m.dice:.3f}"
            + ("" if m.detected else "  [MISSED]"))
    if result.nuclei:
        n = result.nuclei
        lines += ["", "Cells: a real fluorescence image (DSB2018, CC0) with the nuclei model:",
                  f"  {n['objects']} nuclei found ({n['true_objects']} in its mask), "
                  f"AP at IoU 0.5 {n['ap50']:.3f}, DSB score {n['dsb_score']:.3f}",
                  f"  {rel(Path(n['labels']))}  label image (TIFF, the image's rows x columns)",
                  f"  {rel(Path(n['objects_csv']))}  one row per nucleus (area px^2, centroid...)",
                  f"  {n['predict_command']}"]
    lines += ["", "The same prediction on your own DICOM folders or NIfTI files:",
              f"  {result.predict_command}",
              "", "Open the result in napari:", f"  {result.napari_command}"]
    return "\n".join(lines)


def _training_note(result: DemoResult) -> list[str]:
    """For a model trained by the run: how far it got, and what the shipped one took."""
    if not result.model_trained:
        return []
    from medseg.model_card import read_model_card

    training = read_model_card(result.model_path).training
    return [f"  best of {training.get('iterations', '?')} iterations in "
            f"{float(training.get('elapsed_s', 0.0)) / 60:.1f} min; the shipped model took 1400 "
            "iterations (40 min on a 2-core CPU); --train-minutes 50 trains one like it"]


def _mm(point: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in point) + ") mm LPS"
