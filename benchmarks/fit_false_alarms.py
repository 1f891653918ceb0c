"""False alarms of the fit report: every shipped model over its own validation cases.

The validation cases (``training.split.val`` of each card, read as training read them; the
demo model's synthetic case made again from its seed) are what each model was validated on:
a warning there is a false alarm (target: none). Also prints the time the checks take
(``timings["fit"]``) against the whole prediction.

Usage (repository root)::

    .venv/bin/python benchmarks/fit_false_alarms.py | tee benchmarks/results/fit_false_alarms.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from card_domain import USE, split_cases  # noqa: E402

from medseg.inference import InferenceOptions, Segmenter  # noqa: E402
from medseg.training.runtime import cpu_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=sorted(USE))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {__doc__.splitlines()[0]}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# cpu: {cpu_name()}; torch threads {args.threads}")
    total_warn = 0
    for name in args.models:
        segmenter = Segmenter.from_file(name, InferenceOptions(device="cpu"))
        cases = split_cases(segmenter.card, "val")
        warned, fit_s, all_s = [], 0.0, 0.0
        for case in cases:
            t = time.perf_counter()
            prediction = segmenter.predict(case.image)
            all_s += time.perf_counter() - t
            fit_s += prediction.timings.get("fit", 0.0)
            if prediction.fit.warnings:
                warned.append((case.case_id, [c.message for c in prediction.fit.warnings]))
        total_warn += len(warned)
        print(f"{name}: {len(cases)} validation cases, {len(warned)} with warnings; fit checks "
              f"{fit_s:.3f} s of {all_s:.2f} s predicting ({100 * fit_s / all_s:.2f}%)",
              flush=True)
        for case_id, messages in warned:
            print(f"    {case_id}: {' | '.join(messages)}")
    print(f"# false alarms in all: {total_warn}")


if __name__ == "__main__":
    main()
