"""2D batch speed: ``medseg-predict`` over a folder of images, images per second after start-up.

Start-up (interpreter, imports, model load) is excluded by timing from the first to the last
``case_finished`` event of the run's JSON-lines log; the mean per-stage seconds come from the
case records.

Usage (repository root):
    .venv/bin/python benchmarks/bench_2d.py --model nuclei \
        --images ../shared/data/dsb2018_nuclei/images --shape 256x256 --count 40 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from predict_runs import add_predict_options, finished_cases, run_predict

from medseg.training.runtime import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_predict_options(parser)
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--shape", default=None, help="only images of this size, e.g. 256x256")
    parser.add_argument("--count", type=int, default=40)
    args = parser.parse_args()
    chosen = []
    for p in sorted(Path(args.images).iterdir()):
        if len(chosen) >= args.count:
            break
        if args.shape:
            with Image.open(p) as im:
                if f"{im.height}x{im.width}" != args.shape:
                    continue
        chosen.append(p)
    work = Path(tempfile.mkdtemp(prefix="medseg-bench2d-"))
    folder = work / "in"
    folder.mkdir()
    for p in chosen:
        (folder / p.name).symlink_to(p.resolve())
    log = work / "events.jsonl"
    rc = run_predict(args, args.model, work / "out", [folder], log=log)
    done, per_s = finished_cases(log)
    stages: dict[str, list[float]] = {}
    for e in done:
        for k, v in e["timings_s"].items():
            stages.setdefault(k, []).append(v)
    print(f"model {args.model}, {len(done)} images {args.shape or ''} from {args.images}, "
          f"threads {args.threads}, options {args.extra}, rc {rc}")
    print(f"machine: {cpu_name()}, {platform.machine()}")
    print(f"images per second after start-up: {per_s:.2f}")
    print("mean seconds per image: " + ", ".join(f"{k} {np.mean(v):.4f}"
                                                for k, v in sorted(stages.items())))


if __name__ == "__main__":
    main()
