"""``medseg-predict``: segment files, folders and manifests with one model (thin Typer shell).

Example::

    medseg-predict --model hippocampus --format nifti --format dicom-seg -o OUT scans/ more.nii.gz

Exit code 0 when every case succeeded (or was already done), 1 if any case failed, 2 when the
run could not start (unknown model, bad option, unreadable manifest).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import IO, Any

import typer

from medseg.inference.batch import DEFAULT_CASE_TIMEOUT_S

app = typer.Typer(add_completion=False, help="Segment medical images with a medseg model.")


class _JsonLines:
    """Writes one JSON object per line, flushed at once (a killed run keeps every line)."""

    def __init__(self, target: str | None) -> None:
        self.stream: IO[str] | None = None
        self.owned = False
        if target == "-":
            self.stream = sys.stdout
        elif target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self.stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self.owned = True

    def __call__(self, event: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps(event, sort_keys=True, default=str) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.owned and self.stream is not None:
            self.stream.close()


@app.command()
def predict_command(
    inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively "
                                       "for DICOM series and NIfTI/NRRD/MHA files) and "
                                       "manifests (.csv with a 'path' column, or .json list)."),
    model: str = typer.Option(..., "--model", "-m", help="Shipped model name or .safetensors "
                              "model file."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
    formats: list[str] = typer.Option(["auto"], "--format", "-f", help="auto (default: a "
                                      "TIFF label image with the image's rows and columns for "
                                      "2D images, NIfTI for volumes, plus a CSV of objects or "
                                      "lesions), nifti, dicom-seg, tiff, png, measurements, "
                                      "probabilities (softmax per class, NIfTI) and/or "
                                      "uncertainty (normalised entropy, NIfTI); repeat the "
                                      "option for several."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases already finished."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... "
                                      "(default: cuda if available, else cpu)."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap in [0, 1)."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Mirror test-time augmentation."),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="Mixed precision (default: "
                                    "on for CUDA and for CPUs with native bf16)."),
    low_memory: bool = typer.Option(False, "--low-memory", help="Smaller peak memory, slower "
                                    "forward passes (see docs/predict.md); Ray workers get it "
                                    "too."),
    whole_image: bool | None = typer.Option(None, "--whole-image/--windows", help="2D "
                                            "models: run each image whole in one pass, or in "
                                            "overlapping windows (default: whole up to about "
                                            "1448x1448 pixels)."),
    strict: bool = typer.Option(False, "--strict", help="Fail a case whose image does not "
                                "fit the model's training domain (modality, field of view, "
                                "intensities, label sizes) instead of only warning."),
    diameter: str | None = typer.Option(None, "--diameter",
                                        help="Instance models (nuclei): typical object "
                                        "diameter in the input's pixels, or 'auto' (estimated "
                                        "for each image from a first pass); the image is "
                                        "zoomed to the model's training size (at most 2x "
                                        "either way). Default: the model card's ('auto' for "
                                        "a model fine-tuned at one object scale), else native "
                                        "pixels."),
    force: bool = typer.Option(False, "--force", help="Run cases the compute guard refuses "
                               "(work more than --max-work times the largest training "
                               "image's); their estimate is still recorded."),
    max_work: float | None = typer.Option(None, "--max-work", min=0.001, help="Compute "
                                          "guard: refuse a case whose sliding windows on the "
                                          "model grid are more than this many times those of "
                                          "the largest image the model was trained on "
                                          "(default: MEDSEG_MAX_WORK, else 100)."),
    case_timeout: float = typer.Option(DEFAULT_CASE_TIMEOUT_S, "--case-timeout", min=0,
                                       help="Seconds a case may run before it is cancelled, "
                                       "recorded as failed, and the batch goes on (0: no "
                                       "limit). Default 1800 (30 min): 25 times or more "
                                       "the slowest shipped validation case on a busy 2-core "
                                       "CPU."),
    keep_largest: bool = typer.Option(False, "--keep-largest", help="Keep only the largest "
                                      "connected component of each label."),
    min_size_ml: float = typer.Option(0.0, "--min-size-ml", help="Remove components smaller "
                                      "than this volume (mL)."),
    fill_holes: bool = typer.Option(False, "--fill-holes", help="Label the background each "
                                    "label encloses (a cyst or cavity inside a lesion): per "
                                    "slice for a 2D model, in 3D for a 3D one."),
    log_json: str | None = typer.Option(None, "--log-json", help="Write JSON-lines events to "
                                        "this file ('-' for stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every stage."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for the "
                                       "local backend (default: torch's; 1 is often faster "
                                       "on a small machine shared with other jobs)."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", min=1, help="Cases in flight in "
                                    "the local backend, sharing the threads (default: 2 for a "
                                    "2D model on a multi-core CPU, else 1)."),
    backend: str = typer.Option("local", "--backend", help="local (this process) or ray "
                                "(spread cases over Ray workers; needs the optional "
                                "'distributed' extra, see docs/SCALING.md)."),
    workers: int | None = typer.Option(None, "--workers", help="Ray workers (default: one per "
                                       "GPU, else one per CPU)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Join this Ray cluster "
                                           "('auto', 'ray://head:10001'); default: a local one."),
) -> None:
    """Segment INPUTS into OUTPUT: per case a label map, a JSON record, and a run summary.

    Example: medseg-predict --model hippocampus --output results/ scans/
    """
    from tqdm import tqdm

    from medseg.errors import MedsegError
    from medseg.inference.batch import run_batch
    from medseg.inference.options import InferenceOptions

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = _JsonLines(log_json)
    bar = None if quiet else tqdm(total=0, unit="case", file=sys.stderr, desc="medseg-predict")
    runner = None

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        if backend not in ("local", "ray"):
            raise typer.BadParameter(f"--backend must be local or ray, got {backend!r}")
        if backend == "local" and (workers is not None or ray_address):
            raise typer.BadParameter("--workers and --ray-address need --backend ray")
        if backend == "ray" and jobs is not None:
            raise typer.BadParameter("--jobs is for the local backend (Ray: --workers)")
        if backend == "ray":
            from medseg.distributed.ray_backend import RayRunner

            runner = RayRunner(workers=workers, address=ray_address)
        elif threads is not None:
            import torch

            torch.set_num_threads(threads)
        # the settings, built once here, go whole to every engine (local or Ray workers)
        guard = {"max_work": max_work} if max_work is not None else {}
        inference = InferenceOptions(device=device, overlap=overlap, tta=tta, amp=amp,
                                     keep_largest=keep_largest, min_size_ml=min_size_ml,
                                     fill_holes=fill_holes,
                                     low_memory=low_memory, whole_image=whole_image,
                                     strict=strict, object_diameter=_diameter(diameter),
                                     force=force,
                                     **guard)
        summary = run_batch(inputs, model, output, formats=formats, overwrite=overwrite,
                            inference=inference, progress=progress, on_event=log, runner=runner,
                            jobs=jobs, case_timeout_s=case_timeout or None)
    except MedsegError as exc:
        log({"event": "run_error", "error": str(exc), "error_type": type(exc).__name__})
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from exc
    finally:
        if runner is not None:
            runner.close()
        if bar is not None:
            bar.close()
        log.close()
    if not quiet:
        typer.echo(f"{summary.total} case(s): {summary.completed} done, {summary.already_done} "
                   f"already done, {len(summary.failed)} failed ({summary.wall_s:.1f} s); "
                   f"records in {output}", err=True)
        for record in summary.records:
            for message in record.warnings if record.ok else ():
                typer.secho(f"warning {record.case_id}: {message}", err=True,
                            fg=typer.colors.YELLOW)
        for case_id, reason in summary.failed.items():
            typer.secho(f"failed {case_id}: {reason}", err=True, fg=typer.colors.RED)
    if summary.failed:
        raise typer.Exit(code=1)


def _diameter(text: str | None) -> float | str | None:
    """``--diameter``: ``auto`` or a number of pixels (checked by ``InferenceOptions``)."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        return float(text)
    except ValueError:
        return text  # refused with InferenceOptions' message


def main() -> None:
    app()


if __name__ == "__main__":
    main()

