"""Brain-tumour recipes compared on the same out-of-fold patients (the recipe that ships is the
best by out-of-fold mean).

Each ``--runs NAME=FOLDER`` is a cross-validation folder of ``benchmarks/tumour_cv_train.sh``
(``fold-K/result.json`` and the out-of-fold probabilities ``benchmarks/tumour_cv.py`` caches in
``fold-K/oof``). Only patients out of fold in every recipe are compared. For each recipe and
decision threshold (keep-largest, as shipped): mean, median, min, patients below 0.6, per site,
the confidence score's AUROC for Dice < 0.6 (``inside_probability``); then the average of the
recipes' probabilities (an ensemble, at the summed inference cost) and paired differences
(at 0.5, and at each recipe's best threshold; bootstrap over patients).

A recipe whose run folders are gone can still be compared through its committed report
(``--baseline NAME=benchmarks/results/tumour_cv.txt``): the per-patient Dice of that report's
"Per patient" table (its own post-processing, keep-largest at 0.5 as shipped) is paired with each
recipe's Dice at 0.5 on the patients both have, patient by patient. Only some folds of a new
recipe need to be finished for that comparison.

Usage (repository root):
    .venv/bin/python benchmarks/tumour_compare.py --runs 2D=runs/tumour-cv 2.5D=runs/cv25
    .venv/bin/python benchmarks/tumour_compare.py --runs aug=runs/cv-aug \
        --baseline 10k=benchmarks/results/tumour_cv.txt
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
    poor = [d < POOR for d in dices.values()]
    return summary_row(name, dices, t, f"{auroc(scores, poor):.3f}"), dices


def committed_dice(report: Path) -> dict[str, float]:
    """Patient -> Dice from the "Per patient" table of a committed ``tumour_cv.py`` report."""
    dices: dict[str, float] = {}
    inside = False
    for line in report.read_text().splitlines():
        if line.startswith("## "):
            inside = line.startswith("## Per patient")
        elif inside and line.strip().startswith("TCGA_"):
            fields = line.split()
            dices[fields[0]] = float(fields[4])
    if not dices:
        raise SystemExit(f"{report}: no per-patient table")
    return dices


def paired(label: str, a: dict[str, float], b: dict[str, float], common: list[str]) -> None:
    diff = np.asarray([b[p] - a[p] for p in common])
    rng = np.random.default_rng(0)
    boot = [rng.choice(diff, len(diff)).mean() for _ in range(10000)]
    low, high = np.percentile(boot, [2.5, 97.5])
    print(f"\npaired: {label}: mean {diff.mean():+.4f} (95% bootstrap interval {low:+.4f} to "
          f"{high:+.4f}), better on {int((diff > 0.01).sum())}, worse on "
          f"{int((diff < -0.01).sum())}, within 0.01 on {int((abs(diff) <= 0.01).sum())} patients")


def summary_row(name: str, dices: dict[str, float], t: float = 0.5, auroc_text: str = "  -  "
                ) -> str:
    """A table line: threshold, mean, median, min, patients below 0.6, the confidence's AUROC
    (``"  -  "`` when there are no probabilities), per-site means."""
    v = np.asarray(list(dices.values()))
    sites: dict[str, list[float]] = defaultdict(list)
    for p, d in dices.items():
        sites[p.split("_")[1]].append(d)
    return (f"  {name:14s} {t:.1f}  {v.mean():.4f} {np.median(v):.4f} {v.min():.4f} "
            f"{int((v < POOR).sum()):3d}   {auroc_text}   "
            + " ".join(f"{s} {np.mean(x):.3f}" for s, x in sorted(sites.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=FOLDER ...")
    parser.add_argument("--baseline", default=None,
                        help="NAME=REPORT: a committed tumour_cv.py report to pair with")
    args = parser.parse_args()
    base_name, base = None, None
    if args.baseline:
        base_name, report = args.baseline.split("=", 1)
        base = committed_dice(Path(report))
    recipes: dict[str, dict[str, np.ndarray]] = {}
    truths: dict[str, np.ndarray] = {}
    for spec in args.runs:
        name, folder = spec.split("=", 1)
        folds = sorted(d for d in Path(folder).glob("fold-*") if (d / "result.json").is_file())
        cases = [c for run in folds for c in predict_fold(run, tta=False, threads=1)]
        recipes[name] = {c.patient: c.p.astype(np.float32) for c in cases}
    common = sorted(set.intersection(*(set(r) for r in recipes.values()),
                                     *([set(base)] if base else [])))
    for p in common:
        truths[p] = patient_truth(p)
    print(f"# brain-tumour recipes on the same {len(common)} out-of-fold patients; machine: "
          f"{cpu_name()}, {platform.machine()}")
    print(f"# python benchmarks/tumour_compare.py --runs {' '.join(args.runs)}"
          + (f" --baseline {args.baseline}" if args.baseline else ""))
    print("  recipe      threshold mean   median min   <0.6  AUROC(conf)  per site")
    per: dict[str, dict[str, float]] = {}
    if base is not None:
        print(summary_row(f"{base_name}*", {p: base[p] for p in common}))
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
            paired(f"{names[1]}@{tb} - {names[0]}@{ta}", per[f"{names[0]}@{ta}"],
                   per[f"{names[1]}@{tb}"], common)
    if base is not None:
        print(f"  (* {base_name}: the per-patient Dice of the committed report, not re-run)")
        for name in recipes:
            paired(f"{name}@0.5 - {base_name}", base, per[f"{name}@0.5"], common)
        print("\npatient, " + ", ".join([f"{base_name}*"] + list(recipes)))
        for p in common:
            print(f"  {p} {base[p]:.4f} "
                  + " ".join(f"{per[f'{n}@0.5'][p]:.4f}" for n in recipes))


if __name__ == "__main__":
    main()
