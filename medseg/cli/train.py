"""``medseg-train``: train a segmentation model from a YAML/JSON config, or fine-tune a model on
a folder of corrected images (thin Typer shell over :func:`medseg.training.train` and
:func:`medseg.training.finetune.finetune`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(add_completion=False, help="Train or fine-tune a medseg segmentation model.")


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise typer.BadParameter(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(value)


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


class _BudgetBar:
    """A progress bar over a time budget in seconds (``tqdm``), showing the steps as well."""

    def __init__(self, budget_s: float, desc: str, *, quiet: bool) -> None:
        from tqdm import tqdm

        self.bar: Any = None if quiet else tqdm(
            total=round(budget_s), unit="s", desc=desc, mininterval=2.0,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                       "[{elapsed}<{remaining}{postfix}]")

    def show(self, elapsed_s: float, postfix: str) -> None:
        if self.bar is not None:
            self.bar.n = min(round(elapsed_s), self.bar.total)
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@app.command()
def train_command(
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="Training config (YAML or JSON)."),
    from_model: str | None = typer.Option(
        None, "--from-model", help="Fine-tune this model (a name or a .safetensors file) on "
        "--data, with the recipe of its card; no config needed."),
    data: Path | None = typer.Option(None, "--data", help="With --from-model: a folder with "
                                     "images/ and masks/ (matching file names)."),
    minutes: float = typer.Option(10.0, "--minutes", help="With --from-model: the whole "
                                  "fine-tune's time budget."),
    keep_skill: Path | None = typer.Option(
        None, "--keep-skill", help="With --from-model: a folder (same layout) of images like "
        "the model's own training images, mixed in so it keeps its skill on them."),
    native_scale: bool = typer.Option(
        False, "--native-scale", help="With --from-model: train on the images as they are "
        "(default for an instance model of 2D images: zoom each so that its objects are the "
        "size the model learnt, and the new model sizes every image it meets)."),
    name: str | None = typer.Option(None, "--name", help="With --from-model: the new model's "
                                    "name (default: the --export file's stem)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
    seed: int = typer.Option(0, "--seed", help="With --from-model: seed of the hold-out and "
                             "training."),
    set_: list[str] = typer.Option([], "--set", help="Override an option, e.g. --set lr=0.005 "
                                   "--set data.max_cases=10 (YAML values)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT_DIR/last."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run folder."),
    export: Path | None = typer.Option(None, "--export", help="Copy the best model here (a "
                                       "fine-tuned one only when it beats its base)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train as CONFIG says, or fine-tune --from-model on --data for --minutes.

    Example: medseg-train --config workflows/hippocampus.yaml --export hippo.safetensors
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = dict(_parse_override(s) for s in set_)
    if (config is None) == (from_model is None):
        raise _fail(ValueError("give --config FILE (train) or --from-model MODEL --data DIR "
                               "(fine-tune)"))
    if from_model is not None:
        if data is None:
            raise _fail(ValueError("--from-model needs --data DIR (images/ and masks/)"))
        _finetune(from_model, data, minutes=minutes, export=export, name=name,
                  overrides=overrides, seed=seed, threads=threads, keep_skill=keep_skill,
                  run_dir=output_dir, quiet=quiet, object_scale=not native_scale)
        return
    assert config is not None
    if threads is not None:
        overrides["num_threads"] = threads
    _train(config, overrides=overrides, resume=resume, output_dir=output_dir, export=export,
           quiet=quiet)


def _train(config: Path, *, overrides: dict[str, Any], resume: bool, output_dir: Path | None,
           export: Path | None, quiet: bool) -> None:
    import time

    from tqdm import tqdm

    from medseg.distributed.ddp import is_main_process
    from medseg.errors import MedsegError
    from medseg.training import load_config, train

    if output_dir is not None:
        overrides["output_dir"] = str(output_dir)
    bar: Any = None
    try:
        cfg = load_config(config, overrides=overrides)
        quiet = quiet or not is_main_process()  # one progress bar under torchrun
        if cfg.time_budget_min:  # the budget ends the run long before the iterations do
            bar = _BudgetBar(cfg.time_budget_min * 60.0, cfg.name, quiet=quiet)
            start = time.monotonic()

            def progress(done: int, total: int) -> None:
                bar.show(time.monotonic() - start, f"step {done}")
        else:
            bar = None if quiet else tqdm(total=cfg.epochs * cfg.iters_per_epoch, unit="it",
                                          mininterval=5.0, desc=cfg.name)

            def progress(done: int, total: int) -> None:
                if bar is not None:
                    bar.n = done
                    bar.refresh() if done % cfg.iters_per_epoch == 0 else bar.update(0)

        result = train(cfg, resume=resume, progress=progress)
    except MedsegError as exc:
        raise _fail(exc) from exc
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


def _finetune(base: str, data: Path, *, minutes: float, export: Path | None, name: str | None,
              overrides: dict[str, Any], seed: int, threads: int | None,
              keep_skill: Path | None, run_dir: Path | None, quiet: bool,
              object_scale: bool = True) -> None:
    from medseg.errors import MedsegError
    from medseg.training.finetune import FinetuneOptions, FinetuneProgress, finetune

    bar = _BudgetBar(minutes * 60.0, f"fine-tune {base}", quiet=quiet)

    def progress(p: FinetuneProgress) -> None:
        figure = f", validation {p.val_metric:.3f}" if p.val_metric is not None else ""
        bar.show(p.elapsed_s, f"{p.phase}, step {p.step}{figure}")

    try:
        options = FinetuneOptions(base=base, data=data, minutes=minutes, export=export,
                                  name=name, overrides=overrides, seed=seed,
                                  num_threads=threads, keep_skill=keep_skill, run_dir=run_dir,
                                  object_scale=object_scale)
        result = finetune(options, progress=progress)
    except MedsegError as exc:
        raise _fail(exc) from exc
    finally:
        bar.close()
    typer.echo(json.dumps({"model": str(result.model_path), "card": str(result.card_path),
                           "metric": result.metric, "before": round(result.before, 4),
                           "after": round(result.after, 4), "improved": result.improved,
                           "steps": result.steps, "minutes": round(result.minutes, 2),
                           "train_cases": len(result.train_cases),
                           "val_cases": len(result.val_cases)}, indent=2))
    typer.echo(result.summary())
    if not result.improved:
        raise typer.Exit(code=1)


def main() -> None:
    from medseg.distributed import ddp

    try:
        app()
    except SystemExit as exc:  # typer ends every command this way
        distributed = ddp.is_distributed()
        ddp.shutdown(together=exc.code in (0, None))
        if distributed:
            ddp.exit_process(exc.code)
        raise
    except BaseException:
        ddp.shutdown(together=False)
        raise


if __name__ == "__main__":
    main()
