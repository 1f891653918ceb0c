"""Brain-tumour recipes compared on the same out-of-fold patients (the recipe that ships is the
best by out-of-fold mean).

Each ``--runs NAME=FOLDER`` is a cross-validation folder of ``benchmarks/tumour_cv_train.sh``
(``fold-K/result.json`` and the out-of-fold probabilities ``benchmarks/tumour_cv.py`` caches in
``fold-K/oof``). Only patients out of fold in every recipe are compared. For each recipe and
decision threshold (keep-largest, as shipped): mean, median, min, patients below 0.6, per site,
the confidence score's AUROC for Dice < 0.6 (``inside_probability``); then the average of the
recipes' probabilities (an ensemble, at the summed inference cost) and paired differences
(at 0.5, and at each recipe's best threshold; bootstrap over patients).

Usage (repository root):
    .venv/bin/python benchmarks/tumour_compare.py --runs 2D=runs/tumour-cv 2.5D=runs/cv25
"""

from __future__ import annotations

import argparse
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
from tumour_cv import POOR, clean, dice, patient_truth, predict_fold, two_class_probabilities

from medseg.inference.confidence import auroc, confidence_of
from medseg.training.runtime import cpu_name


def row(name: str, probs: dict[str, np.ndarray], truths: dict[str, np.ndarray], t: float
        ) -> tuple[str, dict[str, float]]:
    dices, scores = {}, []
    for p, prob in probs.items():
        pred = clean(prob >= t, "largest")
        dices[p] = dice(pred, truths[p])
        scores.append(confidence_of(two_class_probabilities(prob), pred,
                                    rule="inside_probability").score)
    v = np.asarray(list(dices.values()))
    sites: dict[str, list[float]] = defaultdict(list)
    for p, d in dices.items():
        sites[p.split("_")[1]].append(d)
    text = (f"  {name:14s} {t:.1f}  {v.mean():.4f} {np.median(v):.4f} {v.min():.4f} "
            f"{int((v < POOR).sum()):3d}   {auroc(scores, list(v < POOR)):.3f}   "
            + " ".join(f"{s} {np.mean(x):.3f}" for s, x in sorted(sites.items())))
    return text, dices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=FOLDER ...")
    args = parser.parse_args()
    recipes: dict[str, dict[str, np.ndarray]] = {}
    truths: dict[str, np.ndarray] = {}
    for spec in args.runs:
        name, folder = spec.split("=", 1)
        folds = sorted(d for d in Path(folder).glob("fold-*") if (d / "result.json").is_file())
        cases = [c for run in folds for c in predict_fold(run, tta=False, threads=1)]
        recipes[name] = {c.patient: c.p.astype(np.float32) for c in cases}
    common = sorted(set.intersection(*(set(r) for r in recipes.values())))
    for p in common:
        truths[p] = patient_truth(p)
    print(f"# brain-tumour recipes on the same {len(common)} out-of-fold patients; machine: "
          f"{cpu_name()}, {platform.machine()}")
    print(f"# python benchmarks/tumour_compare.py --runs {' '.join(args.runs)}")
    print("  recipe      threshold mean   median min   <0.6  AUROC(conf)  per site")
    per: dict[str, dict[str, float]] = {}
    for name, probs in recipes.items():
        for t in (0.5, 0.7):
            text, dices = row(name, {p: probs[p] for p in common}, truths, t)
            print(text)
            per[f"{name}@{t}"] = dices
    if len(recipes) > 1:
        mean = {p: np.mean([r[p] for r in recipes.values()], axis=0) for p in common}
        for t in (0.5, 0.7):
            print(row("average", mean, truths, t)[0] + f"   ({len(recipes)}x the inference)")
        names = list(recipes)
        best = {n: max((0.5, 0.7), key=lambda t, n=n: np.mean(list(per[f"{n}@{t}"].values())))
                for n in names[:2]}
        for ta, tb in ((0.5, 0.5), (best[names[0]], best[names[1]])):
            a, b = per[f"{names[0]}@{ta}"], per[f"{names[1]}@{tb}"]
            diff = np.asarray([b[p] - a[p] for p in common])
            rng = np.random.default_rng(0)
            boot = [rng.choice(diff, len(diff)).mean() for _ in range(10000)]
            low, high = np.percentile(boot, [2.5, 97.5])
            print(f"\npaired: {names[1]}@{tb} - {names[0]}@{ta}: mean {diff.mean():+.4f} "
                  f"(95% bootstrap interval {low:+.4f} to {high:+.4f}), better on "
                  f"{int((diff > 0.01).sum())}, worse on {int((diff < -0.01).sum())}, within "
                  f"0.01 on {int((abs(diff) <= 0.01).sum())} patients")


if __name__ == "__main__":
    main()
