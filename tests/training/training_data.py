"""Synthetic datasets on disk in each supported layout (seeded spheres/discs, tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.training import DataConfig, TrainConfig


def sphere_case(shape: tuple[int, ...], *, seed: int, radius: float = 6.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Noisy bright sphere/disc: (image float32, label uint8 with classes 0, 1, 2).

    Class 2 is the inner half of the radius, class 1 the outer shell.
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [s / 2 + rng.uniform(-2, 2) for s in shape]
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
    label = np.zeros(shape, np.uint8)
    label[dist <= radius] = 1
    label[dist <= radius / 2] = 2
    image = (label * 60.0 + 100 + rng.normal(0, 15, size=shape)).astype(np.float32)
    return image, label


def write_msd(root: Path, n: int, shape: tuple[int, int, int] = (33, 34, 35)) -> Path:
    """An MSD-layout dataset of ``n`` sphere cases (1 mm, RAS affine with an offset)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 2.5]
    records = []
    for i in range(n):
        image, label = sphere_case(shape, seed=i)
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
        records.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "spheres", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "shell", "2": "core"}, "training": records}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_folder2d(root: Path, n: int, shape: tuple[int, int] = (48, 52)) -> Path:
    """2D PNG pairs in image/ and label/; labels use 255 = background, 0 = disc (EM-like)."""
    from PIL import Image

    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for i in range(n):
        image, label = sphere_case(shape, seed=100 + i, radius=10.0)
        img8 = np.clip(image, 0, 255).astype(np.uint8)
        Image.fromarray(img8).save(root / "image" / f"{i}.png")
        Image.fromarray(np.where(label > 0, 0, 255).astype(np.uint8)).save(
            root / "label" / f"{i}.png")
    return root


def tiny_config(data: DataConfig, out: Path, **overrides: object) -> TrainConfig:
    """A few-iteration CPU run with a tiny network."""
    options: dict[str, object] = {
        "name": "tiny", "output_dir": str(out), "seed": 3, "batch_size": 2, "base_filters": 4,
        "epochs": 2, "iters_per_epoch": 3, "val_every": 1, "amp": "off", "device": "cpu",
        "num_threads": 1,
    }
    options.update(overrides)
    return TrainConfig(data=data, **options)  # type: ignore[arg-type]
