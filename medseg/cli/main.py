"""``medseg``: the end-to-end demo and what this installation holds (thin Typer shell).

Training, prediction and evaluation have their own commands (``medseg-train``,
``medseg-predict``, ``medseg-evaluate``); this one does not repeat them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="medseg: geometry-exact medical image segmentation. "
                       "Start with `medseg demo`.")

STAGE_TITLES = {
    "generate": "synthetic CT",
    "dicom": "DICOM series",
    "train": "training (s)",
    "predict": "segmenting (windows)",
    "evaluate": "scoring",
}


class _StageBars:
    """One tqdm bar (on stderr) per demo stage; a new stage closes the previous bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=STAGE_TITLES.get(stage, stage), file=sys.stderr,
                            leave=True, dynamic_ncols=True, mininterval=0.5)
        if total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()
        self.bar.update(done - self.bar.n)  # tqdm rate-limits the redraws

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("medseg-demo-output"), "--out", "-o",
                             help="Output folder (a previous demo's outputs are replaced)."),
    size: str = typer.Option("default", "--size",
                             help="default (512x512x64 CT at 0.8x0.8x2.5 mm) or small (tests)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic study."),
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="Model name or .safetensors file "
                                          "(default: the shipped demo-liver-lesion model)."),
    train: bool = typer.Option(False, "--train",
                               help="Train the lesion model here first, on synthetic volumes."),
    train_minutes: float | None = typer.Option(
        None, "--train-minutes",
        help="Training time budget with --train (default 3, or 0.5 with --size small; "
             "the shipped model took 50)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every step."),
) -> None:
    """Segment a synthetic CT study end to end and score the result against known lesions.

    Writes a synthetic abdominal CT (liver with lesions) as a DICOM series, segments it with
    the same batch runner as medseg-predict (NIfTI + DICOM SEG + JSON record), and prints
    where everything is, Dice, lesion detection and volumes, and the napari command to view it.
    No data of your own and no network are needed.

    Example: medseg demo --out medseg-demo-output
    """
    from medseg.demo.report import summary_text
    from medseg.demo.run import run_demo
    from medseg.errors import MedsegError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    bars = _StageBars(enabled=not quiet)
    try:
        result = run_demo(out, size=size, seed=seed, model=model, train=train,
                          train_minutes=train_minutes, device=device, progress=bars)
    except MedsegError as exc:
        bars.close()
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from exc
    bars.close()
    typer.echo(summary_text(result))


@app.command("models")
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the models shipped with medseg and your own (fine-tuned) ones: name, version,
    modality, the label ids its outputs hold, spacing.

    Example: medseg models --json
    """
    rows = _shipped_models(user=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no models are shipped in this installation")
        return
    for r in rows:
        typer.echo(f"{r['name']}  ({r['source']}, medseg {r['medseg_version']}, card "
                   f"{r['card_sha256'][:12]})")
        grid = r["target_spacing_mm"]  # in the card's unit (px for pixel models)
        if r["fov_pixels"]:
            spacing = f"field of view resampled to {r['fov_pixels']} px"
        elif grid is None or (r["unit"] == "px" and all(s == 1 for s in grid)):
            spacing = "on the image's own pixels"
        else:
            spacing = f"spacing {grid} {r['unit']}"
        typer.echo(f"  modality {r['modality'] or '?'}, writes {r['output_labels']}, "
                   f"{spacing}, window {r['roi_size']}")
        if r["description"]:
            typer.echo(f"  {r['description']}")
        typer.echo(f"  {r['path']}")


@app.command("info")
def info_command() -> None:
    """Print the versions of medseg and its main libraries, the compute device and models.

    Example: medseg info
    """
    import platform

    import torch

    from medseg.model_card import library_versions

    versions = library_versions()
    for name in ("SimpleITK", "nibabel", "pydicom", "highdicom"):
        versions[name] = _version_of(name)
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    typer.echo(f"medseg {versions.pop('medseg')} on {platform.platform()}, "
               f"python {versions.pop('python')}")
    typer.echo("libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    typer.echo(f"device: {device}, {torch.get_num_threads()} CPU threads")
    rows = _shipped_models(user=True)
    for source, title in (("shipped", "shipped models"), ("yours", "your models")):
        names = [f"{r['name']} (medseg {r['medseg_version']})" for r in rows
                 if r["source"] == source]
        typer.echo(f"{title}: " + (", ".join(names) or "none"))


def _shipped_models(*, user: bool = False) -> list[dict[str, Any]]:
    """The shipped models' rows, and (``user``) those of the user's own models folder."""
    from medseg.model_card import read_model_card
    from medseg.models import MODELS_DIR, list_models, resolve_model

    rows = []
    for name in list_models(user=user):
        path = resolve_model(name)
        card = read_model_card(path)
        rows.append({
            "name": name,
            "source": "shipped" if path.parent == MODELS_DIR else "yours",
            "path": str(path),
            "medseg_version": card.versions.get("medseg", "?"),
            "card_sha256": card.hash(),
            "modality": card.modality,
            "labels": {str(k): v for k, v in card.label_names.items()},  # network classes
            "output_labels": card.output_labels(),
            "unit": (card.domain or {}).get("unit", "mm"),
            "target_spacing_mm": card.target_spacing,
            "fov_pixels": card.fov_pixels,
            "roi_size": card.roi_size,
            "description": card.description,
        })
    return rows


def _version_of(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
