"""``medseg-evaluate``: score segmentations against reference labels (thin Typer shell).

Two ways in:

* ``medseg-evaluate folders PREDICTIONS LABELS``: same-named label files in two folders;
* ``medseg-evaluate model MODEL --data PATH --source msd``: run a model on a labelled dataset
  (by default the held-out cases its model card records) and score it;
* ``medseg-evaluate instances PREDICTIONS LABELS``: instance label images (cells): matching by
  IoU, AP = TP / (TP + FP + FN) at IoU 0.5 (StarDist, Cellpose), the Data Science Bowl score,
  F1 and pixel Dice, per image and pooled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Score segmentations against reference labels. Three commands: "
                       "'folders' (label maps in two folders: Dice, HD95, EM pixel/Rand error), "
                       "'instances' (instance label images: AP@0.5, DSB score, F1, Dice) and "
                       "'model' (run a model on a labelled dataset and score it).\n\n"
                       "Example: medseg-evaluate model hippocampus --data "
                       "../shared/data/msd_hippocampus --source msd")


def parse_value_map(text: str | None) -> dict[int, int] | None:
    """``"0:1,255:0"`` -> ``{0: 1, 255: 0}``."""
    if not text:
        return None
    try:
        return {int(a): int(b) for a, b in (item.split(":") for item in text.split(","))}
    except ValueError as exc:
        raise typer.BadParameter(f"expected RAW:CLASS pairs like 0:1,255:0, got {text!r}") from exc


def _report(summary: dict[str, Any], csv_text: str, *, json_out: Path | None,
            csv_out: Path | None, extra: dict[str, Any] | None = None) -> None:
    from medseg.io.atomic import atomic_write_text

    lines = [f"{'label':<16}{'Dice mean':>10}{'Dice std':>10}{'HD95 mm':>10}"]
    for name, m in summary["labels"].items():
        lines.append(f"{name:<16}{m['dice_mean']:>10.4f}{m['dice_std']:>10.4f}"
                     f"{m['hd95_mean_mm']:>10.2f}")
    if "pixel_error" in summary:
        lines.append(f"pixel error {summary['pixel_error']:.4f}   "
                     f"adapted Rand error {summary['adapted_rand_error']:.4f}")
    if "challenge_pixel_error" in summary:
        lines.append("challenge pixel error (ISBI 2012: 1 - max F-score of the cell interior) "
                     f"{summary['challenge_pixel_error']:.4f}")
    lines.append(f"{summary['num_cases']} case(s)")
    typer.echo("\n".join(lines))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps({**(extra or {}), "summary": summary}, indent=2))
    if csv_out is not None:
        atomic_write_text(csv_out, csv_text)


@app.command("folders")
def folders_command(
    predictions: Path = typer.Argument(..., help="Folder of predicted label maps."),
    labels: Path = typer.Argument(..., help="Folder of reference label maps (same file names)."),
    label_ids: str | None = typer.Option(None, "--labels", help="Classes to score, e.g. 1,2."),
    label_map: str | None = typer.Option(None, help="Reference value mapping, e.g. 0:1,255:0."),
    prediction_map: str | None = typer.Option(None, help="Prediction value mapping."),
    em: bool = typer.Option(False, "--em", help="Also pixel error and adapted Rand error."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the summary as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write per-case scores as CSV."),
) -> None:
    """Score every label file in LABELS against the same-named file in PREDICTIONS.

    Example: medseg-evaluate folders predictions/ labels/ --labels 1,2 --csv scores.csv
    """
    from medseg.errors import MedsegError
    from medseg.metrics import evaluate_folders, scores_to_csv, summarize

    ids = [int(v) for v in label_ids.split(",")] if label_ids else None
    try:
        scores = evaluate_folders(predictions, labels, labels=ids, em=em,
                                  label_values=parse_value_map(label_map),
                                  prediction_values=parse_value_map(prediction_map))
        summary = summarize(scores)
    except MedsegError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from exc
    _report(summary, scores_to_csv(scores), json_out=json_out, csv_out=csv_out)


@app.command("instances")
def instances_command(
    predictions: Path = typer.Argument(..., help="Folder of predicted instance label images."),
    labels: Path = typer.Argument(..., help="Folder of reference instance label images "
                                  "(same case ids)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the summary as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write per-image scores as CSV."),
) -> None:
    """Score instance label images: AP at IoU 0.5, DSB score (IoU 0.5..0.95), F1, Dice.

    Example: medseg-evaluate instances predicted_masks/ true_masks/ --json scores.json
    """
    from medseg.errors import MedsegError
    from medseg.metrics import evaluate_instance_folders

    try:
        summary, rows = evaluate_instance_folders(predictions, labels)
    except MedsegError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from exc
    _instance_report(summary, rows, json_out=json_out, csv_out=csv_out)


def _instance_report(summary: dict[str, Any], rows: list[dict[str, Any]], *,
                     json_out: Path | None, csv_out: Path | None,
                     extra: dict[str, Any] | None = None) -> None:
    """Print pooled object scores; write them (and ``extra``) as JSON and the rows as CSV."""
    from medseg.inference.measure import csv_text
    from medseg.io.atomic import atomic_write_text

    typer.echo(f"{summary['n_images']} image(s), {summary['n_true']} true and "
               f"{summary['n_pred']} predicted objects (match: IoU > t, one to one)\n"
               f"AP@0.5 pooled {summary['ap50_pooled']:.4f}   DSB score pooled "
               f"{summary['dsb_score_pooled']:.4f}   F1@0.5 pooled {summary['f1_50_pooled']:.4f}\n"
               f"AP@0.5 mean per image {summary['ap50_mean_per_image']:.4f}   DSB score mean "
               f"per image {summary['dsb_score_mean_per_image']:.4f}   pixel Dice mean "
               f"{summary['pixel_dice_mean']:.4f}")
    if json_out is not None:
        atomic_write_text(json_out, json.dumps({**(extra or {}), "summary": summary,
                                                "per_image": rows}, indent=2, default=float))
    if csv_out is not None:
        atomic_write_text(csv_out, csv_text(rows, list(rows[0]) if rows else ["case_id"]))


@app.command("model")
def model_command(
    model: str = typer.Argument(..., help="Shipped model name or .safetensors file."),
    data: Path = typer.Option(..., "--data", help="Dataset root (or manifest file)."),
    source: str = typer.Option("msd", help="msd, dicom, folder2d or manifest."),
    cases: str = typer.Option("val", help="'val' (the card's held-out cases), 'all' or ids."),
    image_dir: str = typer.Option("image", help="folder2d: image sub-folder."),
    label_dir: str = typer.Option("label", help="folder2d: label sub-folder."),
    label_map: str | None = typer.Option(None, help="Label value mapping (default: the card's)."),
    em: bool = typer.Option(False, "--em", help="Also pixel error and adapted Rand error."),
    tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 (default: CUDA if present)."),
    save_predictions: Path | None = typer.Option(None, help="Write predictions here."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the summary as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write per-case scores as CSV."),
) -> None:
    """Run MODEL on labelled cases of a dataset and score the predictions (objects matched
    by IoU for an instance model, as the instances command scores them).

    Example: medseg-evaluate model hippocampus --data Task04_Hippocampus/ --source msd
    """
    from medseg.errors import MedsegError
    from medseg.metrics import scores_to_csv
    from medseg.training.evaluation import evaluate_model

    selected: str | list[str] = cases if cases in ("val", "all") else cases.split(",")
    try:
        result = evaluate_model(model, source=source, path=data, cases=selected,
                                image_dir=image_dir, label_dir=label_dir,
                                label_values=parse_value_map(label_map), em=em, device=device,
                                tta=tta, save_predictions=save_predictions)
    except MedsegError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from exc
    typer.echo(f"model {result['model']}: {len(result['cases'])} case(s) in "
               f"{result['seconds']} s")
    if result["instances"]:  # an instance model: its objects are scored
        _instance_report(result["summary"], result["per_case"], json_out=json_out,
                         csv_out=csv_out, extra={"model": result["model"],
                                                 "cases": result["cases"]})
        return
    _report(result["summary"], scores_to_csv(result["per_case"]), json_out=json_out,
            csv_out=csv_out, extra={"model": result["model"], "cases": result["cases"]})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
