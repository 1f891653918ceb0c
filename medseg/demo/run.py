"""The end-to-end demo: a synthetic CT study in, DICOM SEG + NIfTI + report out, scored.

:func:`run_demo` does what a user would do with their own data, with the same library calls
the command-line tools make: it writes a synthetic abdominal CT as a DICOM series
(:func:`medseg.io.write_dicom_series`), segments it with the batch runner behind
``medseg-predict`` (:func:`medseg.inference.batch.run_batch`, NIfTI + DICOM SEG + JSON
record), reads the outputs back and compares them with the lesions it drew.

Output folder layout::

    abdomen_ct/                 the synthetic CT as a DICOM series (the input)
    ground_truth.nii.gz         the true liver (1) and lesion (2) labels
    predictions/                abdomen_ct.nii.gz, abdomen_ct.seg.dcm, abdomen_ct.json,
                                _summary.json (what medseg-predict writes)
    model/                      only with ``train=True``: training set and run
    demo_report.json            everything below, as JSON
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.demo.evaluate import LesionEvaluation, evaluate_lesions
from medseg.demo.model import DEMO_MODEL_NAME, TrainingRecipe, train_demo_model
from medseg.demo.report import write_report
from medseg.demo.synthetic import LABEL_NAMES, LESION_LABEL, Lesion, make_ct_study
from medseg.errors import ConfigError, MedsegError, ModelError

logger = logging.getLogger(__name__)

#: ``progress(stage, done, total)``: the demo has several stages, each with its own count.
StageProgress = Callable[[str, int, int], None]

CASE_ID = "abdomen_ct"
#: Predicted components smaller than this are removed (the smallest drawn lesion is ~3 mL);
#: this drops specks at the ends of the scanned slab.
DEMO_MIN_SIZE_ML = 0.5
MARKER = ".medseg-demo"
OWNED = (CASE_ID, "ground_truth.nii.gz", "predictions", "model", "demo_report.json", "nuclei")
#: The shipped cell model the demo also runs on a real microscopy image.
NUCLEI_MODEL = "nuclei"


@dataclass(frozen=True)
class DemoSize:
    """Grid of the demo study, and of the on-the-spot training.

    Attributes:
        study_shape: Voxels ``(X, Y, Z)`` of the synthetic CT.
        study_spacing: Its voxel size (mm).
        n_lesions: Lesions drawn in the study.
        recipe: How a model is trained when the demo trains one.
    """

    study_shape: tuple[int, int, int]
    study_spacing: tuple[float, float, float]
    n_lesions: int
    recipe: TrainingRecipe = field(default_factory=TrainingRecipe)


SIZES: dict[str, DemoSize] = {
    # A thin-slice abdominal CT: 512 x 512 at 0.8 mm, 64 slices of 2.5 mm.
    "default": DemoSize((512, 512, 64), (0.8, 0.8, 2.5), 3),
    # For tests: same anatomy and field of view, coarse grid, a 5 cm slab.
    "small": DemoSize((160, 160, 20), (2.56, 2.56, 2.5), 2,
                      TrainingRecipe(cases=3, shape=(128, 128, 24), spacing=(3.2, 3.2, 2.5),
                                     val_slices=16, patch_size=(64, 64, 16), minutes=0.5)),
}


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced and how well the prediction matches the truth.

    Attributes:
        out_dir: Output folder.
        dicom_dir: The synthetic CT series (input of the prediction).
        truth_path: True label map (NIfTI).
        model_path: Model file used.
        model_trained: ``True`` if the model was trained by this run.
        prediction_nifti: Predicted labels (NIfTI).
        prediction_seg: Predicted labels (DICOM SEG referencing ``dicom_dir``).
        case_record: The batch runner's JSON record of the case.
        batch_summary: The batch runner's run summary.
        report_path: This result as JSON.
        evaluation: Dice, lesion detection and volumes against the truth.
        generated_lesions: The lesions as drawn by the generator.
        seg_matches_nifti: The DICOM SEG, decoded by :func:`medseg.io.read_dicom_seg`, equals
            the NIfTI prediction voxel for voxel.
        timings_s: Seconds per stage.
        napari_command: Command that opens the study with the prediction in napari.
        predict_command: The ``medseg-predict`` command that makes the same predictions.
        nuclei: The cell part: a real fluorescence image (shipped sample, CC0) segmented by
            the ``nuclei`` model through the same batch runner: the label TIFF, the objects
            table, the object count and AP at IoU 0.5 against its mask; ``None`` when the
            model is not in this installation.
    """

    out_dir: Path
    dicom_dir: Path
    truth_path: Path
    model_path: Path
    model_trained: bool
    prediction_nifti: Path
    prediction_seg: Path
    case_record: Path
    batch_summary: Path
    report_path: Path
    evaluation: LesionEvaluation
    generated_lesions: tuple[Lesion, ...]
    seg_matches_nifti: bool
    timings_s: dict[str, float]
    napari_command: str
    predict_command: str
    nuclei: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d: dict[str, Any] = {k: str(v) if isinstance(v, Path) else v
                             for k, v in self.__dict__.items()}
        d["evaluation"] = self.evaluation.to_dict()
        d["generated_lesions"] = [asdict(x) for x in self.generated_lesions]
        return d


def prepare_output(out_dir: Path) -> None:
    """Create ``out_dir``, or clear a previous demo's outputs from it.

    Raises:
        ConfigError: ``out_dir`` is a file, or a non-empty folder a demo did not create.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; --out needs a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise ConfigError(f"{out_dir} is not empty and was not made by `medseg demo`; "
                          "choose another --out (nothing was written)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (out_dir / MARKER).write_text("made by `medseg demo`; its outputs are replaced on re-runs\n")


def run_demo(
    out_dir: str | Path = "medseg-demo-output",
    *,
    size: str = "default",
    seed: int = 0,
    model: str | Path | None = None,
    train: bool = False,
    train_minutes: float | None = None,
    device: str | None = None,
    progress: StageProgress | None = None,
) -> DemoResult:
    """Run the whole demo and return where everything is and how good the prediction is.

    Args:
        out_dir: Output folder (created; a previous demo's outputs in it are replaced).
        size: A key of :data:`SIZES` (``"default"``, ``"small"`` for tests).
        seed: Seeds the study (and, with ``train``, the training set and run).
        model: Model name or file; default: the shipped ``demo-liver-lesion`` model.
        train: Train the lesion model here first (on synthetic volumes of other seeds).
        train_minutes: Training time budget; default: the size's recipe.
        device: ``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when available.
        progress: ``progress(stage, done, total)`` for the stages ``"generate"``,
            ``"dicom"``, ``"train"`` (seconds of the budget), ``"predict"`` (sliding windows)
            and ``"evaluate"``.

    Raises:
        ConfigError: Unknown size, or an output folder the demo must not overwrite.
        ModelError: The model cannot be found or loaded.
        MedsegError: The prediction failed (the batch record's reason is in the message).
    """
    from medseg.io import write_dicom_series, write_nifti

    if size not in SIZES:
        raise ConfigError(f"unknown demo size {size!r}; choose from {', '.join(SIZES)}")
    if model is not None and train:
        raise ConfigError("give either a model or train=True, not both")
    spec = SIZES[size]
    report = progress or (lambda stage, done, total: None)
    out = Path(out_dir).expanduser().resolve()
    prepare_output(out)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    study = make_ct_study(spec.study_shape, spec.study_spacing, seed=seed,
                          n_lesions=spec.n_lesions,
                          progress=lambda d, n: report("generate", d, n))
    truth_path = write_nifti(study.label, out / "ground_truth.nii.gz")
    timings["generate"] = time.perf_counter() - t

    t = time.perf_counter()
    report("dicom", 0, 1)
    dicom_dir = out / CASE_ID
    write_dicom_series(study.image, dicom_dir, modality="CT",
                       series_description=f"medseg demo synthetic abdomen seed {seed}",
                       patient_id=f"MEDSEG-DEMO-{seed}", patient_name="Demo^Synthetic")
    report("dicom", 1, 1)
    timings["dicom"] = time.perf_counter() - t

    t = time.perf_counter()
    model_path = _resolve_demo_model(out, model, train=train, train_minutes=train_minutes,
                                     recipe=spec.recipe, seed=seed, device=device,
                                     report=report)
    trained = model_path.is_relative_to(out)  # a fallback may train without train=True
    if trained:
        timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    pred_dir = out / "predictions"
    record = _predict(dicom_dir, model_path, pred_dir, device=device,
                      report=lambda d, n: report("predict", d, n))
    timings["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    report("evaluate", 0, 2)
    nifti_path = pred_dir / record.outputs["nifti"]
    seg_path = pred_dir / record.outputs["dicom-seg"]
    evaluation, seg_ok = _score(nifti_path, seg_path, dicom_dir, study.label, report)
    timings["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    nuclei = _nuclei_demo(out / "nuclei", device=device)
    if nuclei is not None:
        timings["nuclei"] = time.perf_counter() - t
    timings["total"] = sum(timings.values())

    result = DemoResult(
        out_dir=out, dicom_dir=dicom_dir, truth_path=truth_path, model_path=model_path,
        model_trained=trained,
        prediction_nifti=nifti_path, prediction_seg=seg_path,
        case_record=pred_dir / f"{record.case_id}.json",
        batch_summary=pred_dir / "_summary.json", report_path=out / "demo_report.json",
        evaluation=evaluation, generated_lesions=study.lesions, seg_matches_nifti=seg_ok,
        timings_s={k: round(v, 2) for k, v in timings.items()},
        napari_command=napari_command(dicom_dir, nifti_path),
        predict_command=shlex.join([
            "medseg-predict", str(dicom_dir), "--model", _model_reference(model_path), "--output",
            str(pred_dir), "--format", "nifti", "--format", "dicom-seg",
            "--min-size-ml", str(DEMO_MIN_SIZE_ML)]),
        nuclei=nuclei,
    )
    write_report(result, size=size, seed=seed)
    return result


def _nuclei_demo(out: Path, *, device: str | None) -> dict[str, Any] | None:
    """Segment the first shipped nuclei sample with the ``nuclei`` model (as
    ``medseg-predict -m nuclei -o OUT IMAGE.png`` would) and score it against its mask."""
    import tifffile
    from PIL import Image

    from medseg.inference.batch import run_batch
    from medseg.metrics import instance_scores
    from medseg.models import resolve_model
    from medseg.samples import nuclei_samples

    try:
        model = resolve_model(NUCLEI_MODEL)
    except ModelError:
        logger.warning("the shipped %r model is missing: the cell part of the demo is skipped",
                       NUCLEI_MODEL)
        return None
    image, mask = nuclei_samples()[0]
    summary = run_batch([image], model, out, device=device, overwrite=True)
    if not summary.ok or not summary.records:
        raise MedsegError(f"nuclei prediction of {image.name} failed: {summary.failed}")
    record = summary.records[0]
    labels_path = out / record.outputs["tiff"]
    truth = np.asarray(Image.open(mask))
    scores = instance_scores(truth, tifffile.imread(labels_path))
    return {"image": str(image), "labels": str(labels_path),
            "objects_csv": str(out / record.outputs["measurements"]),
            "objects": int(record.num_objects or 0), "true_objects": scores.n_true,
            "ap50": round(scores.ap50, 4), "dsb_score": round(scores.dsb_score, 4),
            "predict_command": shlex.join(["medseg-predict", "-m", NUCLEI_MODEL, "-o", str(out),
                                           str(image)])}


def napari_command(image: Path, labels: Path) -> str:
    """A shell command that opens ``image`` in napari with ``labels`` as a Labels overlay.

    Both go through the medseg napari reader (plugin ``medseg``), so they land in the same
    world coordinates. The napari 0.9 command line (``napari --plugin medseg IMAGE LABELS``)
    cannot be used: its ``--layer-type`` applies to every path, and the medseg reader opens
    a NIfTI label map as an image layer; ``Viewer.open(..., layer_type="labels")`` can.
    """
    # JSON string literals are valid Python literals and use double quotes, which keeps the
    # shell quoting of the whole script readable.
    script = (f'import napari; v = napari.Viewer(); v.open({json.dumps(str(image))}, '
              f'plugin="medseg"); v.open({json.dumps(str(labels))}, plugin="medseg", '
              f'layer_type="labels"); napari.run()')
    return shlex.join([_python(), "-c", script])


def _model_reference(path: Path) -> str:
    """A shipped model's name, else the model file's path."""
    from medseg.models import MODELS_DIR

    return path.stem if path.parent.resolve() == MODELS_DIR else str(path)


def _python() -> str:
    """The interpreter running medseg (it has napari if ``medseg[napari]`` is installed)."""
    import sys

    return sys.executable or "python"


def _resolve_demo_model(out: Path, model: str | Path | None, *, train: bool,
                        train_minutes: float | None, recipe: TrainingRecipe, seed: int,
                        device: str | None, report: StageProgress) -> Path:
    from dataclasses import replace

    from medseg.models import resolve_model

    if not train:
        try:
            return resolve_model(model or DEMO_MODEL_NAME)
        except ModelError:
            if model is not None:
                raise
            logger.warning("the shipped model %r is missing from this installation; "
                           "training one here instead", DEMO_MODEL_NAME)
    if train_minutes is not None:
        if train_minutes <= 0:
            raise ConfigError(f"train_minutes must be positive, got {train_minutes}")
        recipe = replace(recipe, minutes=float(train_minutes))
    budget = int(round(recipe.minutes * 60))
    start = time.monotonic()
    report("train", 0, budget)
    path = train_demo_model(
        out / "model", recipe, seed=seed, device=device,
        progress=lambda d, n: report("train", min(int(time.monotonic() - start), budget), budget))
    report("train", budget, budget)
    return path


def _predict(dicom_dir: Path, model_path: Path, pred_dir: Path, *, device: str | None,
             report: Callable[[int, int], None]) -> Any:
    """Segment the study with the batch runner that ``medseg-predict`` uses."""
    from medseg.inference.batch import run_batch
    from medseg.inference.engine import Segmenter
    from medseg.inference.postprocess import PostprocessConfig

    class _WindowProgressSegmenter(Segmenter):
        # run_batch calls predict(image) with no progress callback (its own progress counts
        # cases); this forwards the engine's per-window progress to the demo's display.
        def predict(self, image: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("progress", report)
            return super().predict(image, **kwargs)

    postprocess = PostprocessConfig(min_size_ml=DEMO_MIN_SIZE_ML)
    segmenter = _WindowProgressSegmenter.from_file(model_path, device=device,
                                                   postprocess=postprocess)
    summary = run_batch([dicom_dir], model_path, pred_dir, formats=("nifti", "dicom-seg"),
                        segmenter=segmenter, overwrite=True, postprocess=postprocess)
    if not summary.ok or not summary.records:
        reasons = "; ".join(f"{k}: {v}" for k, v in summary.failed.items()) or "no case found"
        raise MedsegError(f"prediction of {dicom_dir} failed ({reasons})")
    return summary.records[0]


def _score(nifti_path: Path, seg_path: Path, dicom_dir: Path, truth: Any,
           report: StageProgress) -> tuple[LesionEvaluation, bool]:
    """Read both outputs back, compare them with each other and with the truth."""
    from medseg.io import read_dicom_seg, read_image

    prediction = read_image(nifti_path)
    names = {k: v for k, v in LABEL_NAMES.items() if k}
    evaluation = evaluate_lesions(prediction, truth, lesion_label=LESION_LABEL,
                                  label_names=names)
    report("evaluate", 1, 2)
    seg = read_dicom_seg(seg_path, read_image(dicom_dir))
    by_name = {v: k for k, v in seg.meta.label_names.items()}
    decoded = np.zeros_like(prediction.array)
    for value, name in names.items():
        if name in by_name:
            decoded[seg.array == by_name[name]] = value
    seg_ok = bool(np.array_equal(decoded, prediction.array)
                  and seg.meta.same_grid(prediction.meta))
    report("evaluate", 2, 2)
    return evaluation, seg_ok
