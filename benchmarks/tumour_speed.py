"""Seconds per slice of two tumour models on the same FLAIR volume, interleaved on one CPU.

Both models run through the engine (``Segmenter.predict``, the card's clean-up and confidence)
on one patient's FLAIR NIfTI; runs alternate A, B, A, B... so that a busy machine slows both
alike; the median of each is reported.

With ``--code OLD_ROOT NEW_ROOT`` each model runs on its own source tree (a ``git worktree`` of
an older commit for the old model: what users got then, engine included), in a process of its
own per round; rounds alternate old, new, old, new... and each reports its median.

Usage (repository root):
    .venv/bin/python benchmarks/tumour_speed.py OLD.safetensors brain-flair-tumour [--reps 5]
    git worktree add /tmp/old-medseg 152466b
    .venv/bin/python benchmarks/tumour_speed.py OLD.safetensors brain-flair-tumour \
        --code /tmp/old-medseg . --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from medseg.inference import Segmenter
from medseg.io import read_image
from medseg.training.runtime import cpu_name

#: Predictions a fresh process makes before it is timed: the first few of a process are slower
#: (memory the allocator has not kept yet, kernels chosen on first use), not what a batch of
#: many cases sees.
WARM_UP = 3
VOLUME = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lgg_flair_more"
          / "imagesTr" / "TCGA_DU_5852_19950709.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--code", nargs=2, metavar=("ROOT_A", "ROOT_B"), default=None,
                        help="the medseg source tree each model runs on (own process per round)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = read_image(VOLUME)
    slices = image.spatial_shape[2]
    if args.child:  # one round of one model: warm-up, then --reps timed predictions
        seg = Segmenter.from_file(args.models[0])
        for _ in range(WARM_UP):
            seg.predict(image)
        ts = []
        for _ in range(args.reps):
            t = time.perf_counter()
            seg.predict(image)
            ts.append(time.perf_counter() - t)
        print(json.dumps(ts))
        return
    times: list[list[float]] = [[], []]
    if args.code:
        # model files named relative to here, shipped names as they are (each tree's own)
        models = [str(Path(m).resolve()) if Path(m).is_file() else m for m in args.models]
        for _ in range(args.reps):
            for i, (model, root) in enumerate(zip(models, args.code, strict=True)):
                env = {**os.environ, "PYTHONPATH": str(Path(root).resolve())}
                out = subprocess.run(
                    [sys.executable, __file__, model, model, "--child", "--reps", "5",
                     "--threads", str(args.threads)], env=env, check=True, text=True,
                    capture_output=True, cwd=Path(root).resolve()).stdout
                times[i].append(statistics.median(json.loads(out.strip().splitlines()[-1])))
    else:
        segs = [Segmenter.from_file(m) for m in args.models]
        for seg in segs:
            seg.predict(image)  # warm-up
        for _ in range(args.reps):
            for i, seg in enumerate(segs):
                t = time.perf_counter()
                seg.predict(image)
                times[i].append(time.perf_counter() - t)
    code = (f"; code {args.code[0]} / {args.code[1]}, one process per round ({WARM_UP} "
            "predictions to warm up, then the median of 5)"
            if args.code else "")
    print(f"# {VOLUME.name}: {slices} slices of {image.spatial_shape[:2]}; {cpu_name()}, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"{args.reps} interleaved runs each{code}")
    for model, ts in zip(args.models, times, strict=True):
        med = statistics.median(ts)
        print(f"{model}: median {med:.2f} s per volume, {1000 * med / slices:.1f} ms per slice "
              f"(runs {', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
