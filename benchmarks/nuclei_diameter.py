"""What telling the nuclei model the object diameter (``--diameter``) is worth.

For every image of a split, the diameter a user would enter is taken from its mask: the
median equivalent-circle diameter of its nuclei. Three runs are scored by pooled AP@0.5 and
the DSB score: native pixels; with that diameter; and the same images shown at 2x
magnification (pixels repeated, masks too: nuclei twice as wide, as a higher-power objective
gives), native and with the diameter.

Usage (repository root):
    .venv/bin/python benchmarks/nuclei_diameter.py --model nuclei \\
        --data ../shared/data/dsb2018_nuclei --split val --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from nuclei_postprocess import add_split_options, score_line, split_ids
from PIL import Image

from medseg.inference import Segmenter
from medseg.io import read_image
from medseg.metrics import pooled_scores


def median_diameter(mask: np.ndarray) -> float:
    areas = np.bincount(mask.ravel())[1:]
    return float(2 * np.sqrt(np.median(areas[areas > 0]) / np.pi))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_options(parser, model="nuclei")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = Segmenter.from_file(args.model, device="cpu")
    trained = base.card.domain["object_diameter"]
    ids = split_ids(base.card, args)
    runs: dict[str, list] = {k: [] for k in ("native", "diameter", "2x native", "2x diameter")}
    seconds = dict.fromkeys(runs, 0.0)
    for i in ids:
        image = read_image(Path(args.data) / "images" / f"{i}.png")
        truth = np.asarray(Image.open(Path(args.data) / "masks" / f"{i}.png")).T  # (x, y)
        big = image.with_array(np.repeat(np.repeat(image.array, 2, 1), 2, 2))
        big_truth = np.repeat(np.repeat(truth, 2, 0), 2, 1)
        d = median_diameter(truth)
        for name, img, t, dia in [("native", image, truth, None), ("diameter", image, truth, d),
                                  ("2x native", big, big_truth, None),
                                  ("2x diameter", big, big_truth, 2 * d)]:
            seg = Segmenter(base.model, base.card,
                            base.inference_options.replace(object_diameter=dia))
            start = time.perf_counter()
            labels = seg.predict(img).labels.array[0]
            seconds[name] += time.perf_counter() - start
            runs[name].append((t, labels))
    print(f"model {args.model} (training diameter {trained} px), {len(ids)} {args.split} images "
          f"(every {args.every}), {args.threads} threads, machine {platform.machine()}")
    for name, pairs in runs.items():
        print(f"{name:12s}: {score_line(pooled_scores(pairs))}, {seconds[name]:.1f} s")


if __name__ == "__main__":
    main()
