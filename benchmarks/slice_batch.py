"""Milliseconds per slice of a 2D model over a volume, by how many slices go in one forward pass.

The engine runs a 2D model over a volume's slices a few at a time (``_slices_per_pass``). This
times ``Segmenter.predict`` (the whole engine: normalisation, network, clean-up, confidence) on
one FLAIR volume with 1, 2, 4, 8 and 16 slices of 256 x 256 per pass,
interleaved round by round, with the CPU's autocast choice (``auto``: bf16 where the CPU has it
natively) and in float32 (``off``, what an AVX2-only CPU runs).

Usage (repository root; a quiet machine)::

    .venv/bin/python benchmarks/slice_batch.py --threads 1 2 --reps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tumour_speed import VOLUME

from medseg.inference import InferenceOptions, Segmenter
from medseg.io import read_image
from medseg.training.runtime import cpu_name

SIZES = (1, 2, 4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain-flair-tumour")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--amp", nargs="+", default=["auto", "off"], choices=["auto", "off"])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    image = read_image(VOLUME)
    slices = image.spatial_shape[2]
    print(f"# {VOLUME.name}: {slices} slices of {image.spatial_shape[:2]}; {args.model}; "
          f"{cpu_name()}; load average {os.getloadavg()[0]:.1f}")
    engine_choice = Segmenter._slices_per_pass
    for amp in args.amp:
        seg = Segmenter.from_file(args.model,
                                  options=InferenceOptions(amp=None if amp == "auto" else False))
        shipped = engine_choice(seg, tuple(seg.card.fov_pixels or image.spatial_shape[:2]))
        for threads in args.threads:
            torch.set_num_threads(threads)
            times: dict[int, list[float]] = {b: [] for b in SIZES}
            for rep in range(args.reps + 1):
                for b in SIZES:
                    Segmenter._slices_per_pass = lambda self, shape, b=b: b  # type: ignore
                    t = time.perf_counter()
                    seg.predict(image)
                    if rep:  # the first round warms up
                        times[b].append(time.perf_counter() - t)
            medians = {b: 1000 * statistics.median(ts) / slices for b, ts in times.items()}
            best = min(medians, key=medians.__getitem__)
            print(f"amp {amp:4s} ({seg.amp_dtype or 'float32'}), {threads} thread(s): "
                  + ", ".join(f"{b}: {m:.1f}" for b, m in medians.items())
                  + f" ms per slice; fastest {best}; the engine's choice {shipped}")
    Segmenter._slices_per_pass = engine_choice  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
