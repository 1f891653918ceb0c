"""The demo's lesion model: a synthetic training set and the recipe that trains it.

The model shipped as ``medseg/models/demo-liver-lesion.safetensors`` was made by this recipe,
with medseg's own training API (the same :func:`medseg.training.train` that ``medseg-train``
runs): ``OMP_NUM_THREADS=1 medseg demo --train --train-minutes 50`` (see
:func:`train_demo_model`), whose best checkpoint (1400 iterations) was exported with
:func:`medseg.training.export.export_model`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.demo.synthetic import LABEL_NAMES, make_ct_study
from medseg.io import write_nifti
from medseg.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: Name of the shipped demo model (``medseg.models.resolve_model`` finds it).
DEMO_MODEL_NAME = "demo-liver-lesion"
#: Training seeds start here, far from any study seed a user would pick.
TRAIN_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class TrainingRecipe:
    """How the demo model is trained (small on purpose: it must fit a few CPU minutes).

    Attributes:
        cases: Synthetic training volumes (the last one is held out for validation).
        shape: Grid of each training volume.
        val_slices: Slices of the validation volume. A thin slab makes validation (a full
            sliding-window pass) cheap, but hides errors at the liver's tips and the volume's
            ends, so the shipped model was validated on whole volumes.
        spacing: Its voxel size (mm), also the model's working spacing.
        lesions_per_case: Lesions drawn in each training volume.
        patch_size: Training patch (a multiple of the network's divisor).
        base_filters: Features at full resolution.
        max_filters: Feature cap.
        minutes: Training time budget (the run stops and keeps its best checkpoint).
    """

    cases: int = 9
    shape: tuple[int, int, int] = (164, 164, 64)
    val_slices: int = 64
    spacing: tuple[float, float, float] = (2.5, 2.5, 2.5)
    lesions_per_case: int = 4
    patch_size: tuple[int, int, int] = (80, 80, 24)
    base_filters: int = 8
    max_filters: int = 64
    minutes: float = 3.0


def write_training_set(folder: str | Path, recipe: TrainingRecipe, *, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> Path:
    """Write ``recipe.cases`` synthetic CTs and labels in the MSD layout (``dataset.json``).

    Seeds are ``TRAIN_SEED_OFFSET + seed * 1000 + i``, so training volumes never repeat the
    demo study (seed ``seed``).

    Returns:
        The dataset folder.
    """
    root = Path(folder)
    records = []
    for i in range(recipe.cases):
        last = i == recipe.cases - 1
        shape = (*recipe.shape[:2], recipe.val_slices) if last else recipe.shape
        study = make_ct_study(shape, recipe.spacing, n_lesions=recipe.lesions_per_case,
                              seed=TRAIN_SEED_OFFSET + seed * 1000 + i)
        name = f"synthetic_{i:03d}.nii.gz"
        write_nifti(study.image, root / "imagesTr" / name)
        write_nifti(study.label, root / "labelsTr" / name)
        records.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
        if progress is not None:
            progress(i + 1, recipe.cases)
    dataset = {
        "name": "medseg synthetic abdomen CT",
        "description": "Seeded synthetic CTs from medseg.demo.synthetic.make_ct_study",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "numTraining": len(records),
        "training": records,
    }
    atomic_write_text(root / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    return root


def train_demo_model(folder: str | Path, recipe: TrainingRecipe, *, seed: int = 0,
                     device: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Train the demo lesion model from scratch inside ``folder``; returns the model file.

    ``folder/dataset`` receives the training set and ``folder/run`` the run (checkpoints,
    metrics.csv, config.json, plan.json); the best checkpoint is the model.
    """
    from medseg.training import AugmentConfig, DataConfig, TrainConfig, train

    folder = Path(folder)
    dataset = write_training_set(folder / "dataset", recipe, seed=seed)
    config = TrainConfig(
        name=DEMO_MODEL_NAME,
        data=DataConfig(source="msd", path=str(dataset),
                        val_cases=[f"synthetic_{recipe.cases - 1:03d}"]),
        output_dir=str(folder / "run"),
        seed=seed,
        target_spacing=list(recipe.spacing),
        normalization="ct",
        patch_size=list(recipe.patch_size),
        batch_size=2,
        base_filters=recipe.base_filters,
        max_filters=recipe.max_filters,
        deep_supervision=False,
        # Half the patches anywhere: the spine and the aorta are as bright as the liver once
        # CT intensities are clipped, and only context tells them apart.
        foreground_prob=0.5,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=1e-4,
        # Epochs are only the validation rhythm here: the time budget ends the run.
        epochs=1000,
        iters_per_epoch=50,
        val_every=4,
        val_overlap=0.25,
        time_budget_min=recipe.minutes,
        amp="off",
        device=device,
        augment=AugmentConfig(),
    )
    result = train(config, progress=progress)
    logger.info("demo model trained: %d iterations in %.0f s, best %s -> %s",
                result.iterations, result.elapsed_s, result.best_metrics, result.best_path)
    return result.best_path
