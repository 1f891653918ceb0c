"""Checkerboard artefacts of a decoder, measured in the spectrum of its probability maps.

A decoder that up-samples by 2 with transposed convolutions (kernel 2, stride 2) adds the same
learned 2x2 pattern under every coarse pixel; deeper levels add 4x4, 8x8 and 16x16 ones. Such a
periodic pattern shows as sharp peaks in the 2D power spectrum of the output at the stride
frequencies: k = N / 2^l (l = 1..4) along rows, columns and both (a Hann window first). The
measure here is the
**peak ratio** at those frequencies: the power there over the median power of its 7x7
spectral neighbourhood (the smooth spectrum of the anatomy around it), in dB, averaged over
the 12 stride frequencies and the validation slices. A map without periodic artefacts scores
about 0 dB (a peak is no stronger than its neighbours); a visible checkerboard scores many dB.
The Nyquist frequency (period 2, the finest checkerboard) is also given alone.

Writes a picture (per decoder: a crop of the membrane probability map and its log spectrum).

Usage (repository root):
    .venv/bin/python benchmarks/decoder_checkerboard.py \
        --model transposed=runs/isbi2012-fast-transposed/last.safetensors \
        --model interp=runs/isbi2012-fast-interp/last.safetensors \
        --data ../shared/data/isbi2012_em/train --picture docs/images/decoder_comparison.png
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medseg.inference import Segmenter
from medseg.model_card import read_model_card
from medseg.models import resolve_model
from medseg.training.dataset import load_raw_case
from medseg.training.runtime import cpu_name
from medseg.training.sources import index_dataset


def stride_frequencies(n: int, levels: int = 4) -> list[tuple[int, int]]:
    """FFT indices of the periods 2, 4, ... 2^levels along rows, columns and both."""
    out = []
    for level in range(1, levels + 1):
        k = n // 2**level
        out += [(k, 0), (0, k), (k, k)]
    return out


def power_spectrum(prob: np.ndarray) -> np.ndarray:
    """|FFT|^2 of the map less its mean, under a 2D Hann window (so the image borders, which
    the FFT treats as periodic, do not smear a cross of power over the spectrum's axes)."""
    window = np.outer(np.hanning(prob.shape[0]), np.hanning(prob.shape[1]))
    return np.abs(np.fft.fft2((prob - prob.mean()) * window)) ** 2


def peak_ratios_db(prob: np.ndarray, levels: int = 4) -> dict[tuple[int, int], float]:
    """Power at each stride frequency over the median of its 7x7 neighbourhood, in dB."""
    power = power_spectrum(prob)
    n0, n1 = power.shape
    ratios = {}
    for ky, kx in stride_frequencies(min(n0, n1), levels):
        rows = [(ky + d) % n0 for d in range(-3, 4)]
        cols = [(kx + d) % n1 for d in range(-3, 4)]
        hood = power[np.ix_(rows, cols)].ravel()
        neighbours = np.delete(hood, hood.size // 2)
        ratios[(ky, kx)] = 10 * np.log10(power[ky, kx] / max(np.median(neighbours), 1e-30))
    return ratios


def spectrum_picture(prob: np.ndarray) -> Image.Image:
    power = np.fft.fftshift(power_spectrum(prob))
    logp = np.log10(power + 1e-12)
    lo, hi = np.percentile(logp, [1, 99.9])
    return Image.fromarray((np.clip((logp - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=MODEL")
    parser.add_argument("--data", required=True, help="folder2d dataset (its card's val split)")
    parser.add_argument("--picture", default=None)
    parser.add_argument("--crop", type=int, default=160)
    args = parser.parse_args()
    print(f"machine: {cpu_name()}, {platform.machine()}")
    print(f"{'decoder':<12}{'stride peaks dB':>16}{'Nyquist dB':>12}   "
          "per period (rows, cols, both)")
    tiles = []
    for spec in args.model:
        name, _, model = spec.partition("=")
        card = read_model_card(resolve_model(model))
        seg = Segmenter.from_file(model, device="cpu")
        index = index_dataset("folder2d", args.data)
        by_id = {p.case_id: p for p in index.pairs}
        mapping = card.training["config"]["data"]["label_values"]
        all_ratios: list[dict[tuple[int, int], float]] = []
        first = None
        for case in card.training["split"]["val"]:
            raw = load_raw_case(by_id[case], label_values={int(k): v for k, v in mapping.items()},
                                num_classes=len(card.label_names))
            pred = seg.predict(raw.image, return_probabilities=True)
            assert pred.probabilities is not None
            prob = pred.probabilities.array[1].astype(np.float64).T  # image rows x columns
            all_ratios.append(peak_ratios_db(prob))
            first = prob if first is None else first
        keys = list(all_ratios[0])
        mean = {k: float(np.mean([r[k] for r in all_ratios])) for k in keys}
        overall = float(np.mean(list(mean.values())))
        nyquist = float(np.mean([mean[k] for k in keys[:3]]))
        per_period = "  ".join(
            f"{2 ** (i + 1)}px: " + "/".join(f"{mean[k]:.1f}" for k in keys[3 * i:3 * i + 3])
            for i in range(len(keys) // 3))
        print(f"{name:<12}{overall:>16.2f}{nyquist:>12.2f}   {per_period}")
        assert first is not None
        c = args.crop
        crop = Image.fromarray((first[:c, :c] * 255).astype(np.uint8)).resize((2 * c, 2 * c),
                                                                              Image.NEAREST)
        spec_img = spectrum_picture(first).resize((2 * c, 2 * c), Image.BILINEAR)
        tiles.append((name, overall, crop, spec_img))
    if args.picture:
        c2 = 2 * args.crop
        canvas = Image.new("L", (2 * c2 + 30, len(tiles) * (c2 + 24) + 4), 255)
        draw = ImageDraw.Draw(canvas)
        for i, (name, overall, crop, spec_img) in enumerate(tiles):
            y = i * (c2 + 24)
            draw.text((4, y + 4), f"{name}: membrane probability (crop, x2) and its power "
                                  f"spectrum; stride peaks {overall:.1f} dB", fill=0)
            canvas.paste(crop, (4, y + 20))
            canvas.paste(spec_img, (c2 + 20, y + 20))
        Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(args.picture)
        print(f"picture: {args.picture}")


if __name__ == "__main__":
    main()
