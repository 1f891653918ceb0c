"""``medseg-train``: train a segmentation model from a YAML/JSON config (thin Typer shell)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, help="Train a medseg segmentation model.")


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise typer.BadParameter(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(value)


@app.command()
def train_command(
    config: Path = typer.Option(..., "--config", "-c", help="Training config (YAML or JSON)."),
    set_: list[str] = typer.Option([], "--set", help="Override an option, e.g. --set lr=0.005 "
                                   "--set data.max_cases=10 (YAML values)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT_DIR/last."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run folder."),
    export: Path | None = typer.Option(None, "--export", help="Copy the best model here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train as CONFIG says; prints the resolved plan, writes checkpoints, logs and metrics.

    Example: medseg-train --config workflows/hippocampus.yaml --export hippo.safetensors
    """
    from tqdm import tqdm

    from medseg.distributed.ddp import is_main_process
    from medseg.errors import MedsegError
    from medseg.training import load_config, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = dict(_parse_override(s) for s in set_)
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir)
    bar = None
    try:
        cfg = load_config(config, overrides=overrides)
        quiet = quiet or not is_main_process()  # one progress bar under torchrun
        bar = None if quiet else tqdm(total=cfg.epochs * cfg.iters_per_epoch, unit="it",
                                      mininterval=5.0, desc=cfg.name)

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.n = done
                bar.refresh() if done % cfg.iters_per_epoch == 0 else bar.update(0)

        result = train(cfg, resume=resume, progress=progress)
    except MedsegError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from exc
    finally:
        if bar is not None:
            bar.close()
    if not is_main_process():  # under torchrun, rank 0 reports and exports
        return
    typer.echo(json.dumps({"best": str(result.best_path), "last": str(result.last_path),
                           "iterations": result.iterations,
                           "elapsed_s": round(result.elapsed_s, 1),
                           "best_metrics": result.best_metrics}, indent=2))
    if export is not None:
        from medseg.training.export import export_model

        export_model(result.best_path, export)
        typer.echo(f"exported {export}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
