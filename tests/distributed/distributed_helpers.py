"""Helpers for the distributed tests: a tiny MSD-layout dataset and torchrun launches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def write_ball_dataset(root: Path, n: int, shape: tuple[int, int, int] = (21, 22, 23)) -> Path:
    """``n`` seeded noisy balls in the MSD layout (1 mm voxels, labels 0/1)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    records = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        centre = np.array(shape) / 2 + rng.uniform(-2, 2, size=3)
        ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
        label = (np.linalg.norm(ijk - centre, axis=-1) <= 5.0).astype(np.uint8)
        image = (80.0 * label + rng.normal(0, 15, size=shape)).astype(np.float32)
        for kind, array in (("imagesTr", image), ("labelsTr", label)):
            nib.save(nib.Nifti1Image(array, np.eye(4)), root / kind / f"ball{i}.nii.gz")
        records.append({"image": f"./imagesTr/ball{i}.nii.gz",
                        "label": f"./labelsTr/ball{i}.nii.gz"})
    meta = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "ball"},
            "training": records}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def torchrun(args: list[str], *, nproc: int = 2, timeout_s: float = 300.0
             ) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node NPROC ARGS`` on loopback with 1 thread/rank."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(nproc), *args]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return done


def write_tiny_model(path: Path, *, seed: int = 0) -> Path:
    """A seeded random-weight 3D DynUNet (2 classes, 16^3 window) saved as a medseg model."""
    import torch

    from medseg.model_card import ModelCard, NormalizationConfig, save_model
    from medseg.networks import build_network, plan_network

    torch.manual_seed(seed)
    config = plan_network(spatial_dims=3, in_channels=1, out_channels=2, patch_size=[16] * 3,
                          base_filters=4, max_filters=16)
    card = ModelCard(name="tiny-balls", network=config,
                     label_names={0: "background", 1: "ball"}, roi_size=[16] * 3,
                     normalization=NormalizationConfig(scheme="zscore"))
    return save_model(path, build_network(config), card)
