"""Out-of-fold scores of the brain-tumour cross-validation, the way held-back patients are judged.

For every finished fold (``RUNS/fold-K/result.json``) each of its validation patients is given
to the fold's model as the held-back patients are given to the shipped one (SOURCE.txt): one
FLAIR NIfTI volume, uint8, axes (TIFF row, TIFF column, slice), identity affine (built from the
TIFF slices for ``lgg_flair``, the file itself for ``lgg_flair_more``), read by medseg's reader
and run through the engine (``Segmenter.predict``, no clean-up, probabilities kept). The
foreground probability is cached per patient (``RUNS/fold-K/oof/<patient>.npz``), so every
post-processing choice is then scored on the same out-of-fold predictions:

* the decision threshold on the foreground probability;
* clean-up: none, keep-largest, small components removed, components below a fraction of the
  largest removed;
* the confidence score (:mod:`medseg.inference.confidence`): its AUROC for patients below
  Dice 0.6, and the warning threshold that warns at most 1 in 10 good results;
* per patient, per site, and why each patient below 0.6 failed.

The same report for a model on the patients it never trained on (``--model``: those of
``lgg_flair`` and ``lgg_flair_more`` outside its card's training split), e.g. the fast preset,
trained on 14 of ``lgg_flair``'s patients: a second set of unseen predictions to choose
post-processing on when the folds' run folders are gone (cached in ``--cache``).

Usage (repository root):
    .venv/bin/python benchmarks/tumour_cv.py --runs runs/tumour-cv [--tta] [--threads 1]
    .venv/bin/python benchmarks/tumour_cv.py --model brain-flair-tumour-fast \
        --cache runs/unseen-fast --post 0.5,largest
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medseg.inference.confidence import SCORE_RULES, auroc, confidence_of, score_from_sums
from medseg.inference.postprocess import fill_holes
from medseg.training.runtime import cpu_name

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
POOR = 0.6


@dataclass
class Case:
    patient: str
    fold: int
    p: np.ndarray          # foreground probability, float16 (row, column, slice)
    truth: np.ndarray      # bool
    q: list[float]         # FLAIR 1/25/50/75/99th percentiles of the non-zero voxels


def patient_nifti(patient: str, work: Path) -> Path:
    """The patient's FLAIR volume as the held-back files are built."""
    more = DATA / "lgg_flair_more" / "imagesTr" / f"{patient}.nii.gz"
    if more.is_file():
        return more
    from eval_tumour import patient_volume

    vol, _ = patient_volume(DATA / "lgg_flair" / patient, 1)
    f = work / f"{patient}.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(f))
    return f


def patient_truth(patient: str) -> np.ndarray:
    more = DATA / "lgg_flair_more" / "labelsTr" / f"{patient}.nii.gz"
    if more.is_file():
        return np.asanyarray(nib.load(str(more)).dataobj) > 0
    from eval_tumour import patient_volume

    return patient_volume(DATA / "lgg_flair" / patient, 1)[1]


def predict_fold(run: Path, *, tta: bool, threads: int) -> list[Case]:
    """Out-of-fold foreground probabilities of one fold's validation patients (cached)."""
    from medseg.model_card import read_model_card

    weights = run / "last.safetensors"
    fold = int(json.loads((run / "config.json").read_text())["data"]["fold"])
    return predict_patients(weights, read_model_card(weights).training["split"]["val"], fold,
                            run / ("oof-tta" if tta else "oof"), tta=tta, threads=threads)


def unseen_patients(weights: Path) -> list[str]:
    """The patients of ``lgg_flair`` and ``lgg_flair_more`` outside the model's training split."""
    from medseg.model_card import read_model_card

    trained = set(read_model_card(weights).training.get("split", {}).get("train", []))
    everyone = sorted(d.name for d in (DATA / "lgg_flair").glob("TCGA_*") if d.is_dir()) + \
        sorted(f.name[:-7] for f in (DATA / "lgg_flair_more" / "imagesTr").glob("*.nii.gz"))
    return [p for p in everyone if p not in trained]


def predict_patients(weights: Path, patients: list[str], fold: int, cache: Path, *, tta: bool,
                     threads: int) -> list[Case]:
    """Foreground probabilities of ``patients`` by the model ``weights`` (cached in ``cache``)."""
    import torch

    from medseg.inference import Segmenter
    from medseg.io import read_image

    cache.mkdir(parents=True, exist_ok=True)
    seg = None
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for patient in patients:
            f = cache / f"{patient}.npz"
            if not f.is_file():
                if seg is None:
                    torch.set_num_threads(threads)
                    seg = Segmenter.from_file(weights, tta=tta)
                image = read_image(patient_nifti(patient, Path(tmp)))
                result = seg.predict(image, return_probabilities=True)
                p = result.probabilities.array
                fg = (p[0] if p.shape[0] == 1 else 1.0 - p[0].astype(np.float32))
                flair = np.asarray(image.array[0], dtype=np.float32)
                q = np.percentile(flair[flair > 0], [1, 25, 50, 75, 99]).tolist()
                np.savez_compressed(f, p=fg.astype(np.float16), q=np.asarray(q))
            z = np.load(f)
            cases.append(Case(patient, fold, z["p"], patient_truth(patient), z["q"].tolist()))
    return cases


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def clean(mask: np.ndarray, how: str, p: np.ndarray | None = None) -> np.ndarray:
    """``none``, ``largest``, ``min:<voxels>``, ``rel:<fraction of the largest>``, ``mass``
    (the component with the most foreground probability ``p``) or ``near:<voxels>`` (the
    largest and the pieces of at least 5% of its size within that many voxels of it);
    face-connected components, as the engine's clean-up. A ``+fill`` suffix then fills the
    holes of what is kept in each slice (background it encloses in the slice's plane, as a
    cyst or cavity inside a lesion), ``+fill3d`` those it encloses in the volume, both as the
    engine's ``fill_holes``."""
    how, _, fill = how.partition("+")
    mask = _components(mask, how, p)
    return fill_holes(mask, per_slice=fill == "fill") if fill else mask


def _components(mask: np.ndarray, how: str, p: np.ndarray | None) -> np.ndarray:
    if how == "none" or not mask.any():
        return mask
    comp, n = ndimage.label(mask)
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    if how in ("largest", "mass"):
        keep = np.zeros(n + 1, bool)
        weights = sizes if how == "largest" else np.bincount(
            comp.ravel(), weights=np.asarray(p, np.float64).ravel())
        weights[0] = 0
        keep[int(np.argmax(weights))] = True
    elif how.startswith("near:"):
        largest = int(np.argmax(sizes))
        distance = ndimage.distance_transform_edt(comp != largest)
        nearest = ndimage.minimum(distance, comp, np.arange(n + 1))
        keep = (np.asarray(nearest) <= float(how[5:])) & (sizes >= 0.05 * sizes[largest])
    elif how.startswith("min:"):
        keep = sizes >= float(how[4:])
    elif how.startswith("rel:"):
        keep = sizes >= float(how[4:]) * sizes.max()
    else:
        raise ValueError(how)
    keep[0] = False
    return keep[comp]


def _sums(features: dict[str, float]) -> dict[str, float]:
    """The sums behind a confidence's features (uncertain / region as a fraction of 1)."""
    return {"soft_voxels": features["soft_voxels"], "hard_voxels": features["hard_voxels"],
            "overlap": features["overlap"], "uncertain": features["uncertain_fraction"],
            "region": 1.0}


def two_class_probabilities(p: np.ndarray) -> np.ndarray:
    pf = p.astype(np.float32)
    return np.stack([1.0 - pf, pf])


def summary(values: list[float]) -> str:
    v = np.asarray(values)
    return (f"mean {v.mean():.4f}, median {np.median(v):.4f}, min {v.min():.4f}, "
            f"below {POOR}: {int((v < POOR).sum())}")


def why(case: Case, pred: np.ndarray, raw: np.ndarray, qs: np.ndarray) -> str:
    """A plain reason for a poor patient, from its volumes, components and contrast."""
    t, p = int(case.truth.sum()), int(pred.sum())
    reasons = [f"predicted {p} of {t} lesion voxels ({p / max(t, 1):.2f}x)"]
    if p < 0.6 * t:
        reasons.append("under-segmentation")
    elif p > 1.6 * t:
        reasons.append("over-segmentation")
    tp_raw = int((raw & case.truth).sum())
    tp = int((pred & case.truth).sum())
    if tp_raw > 1.25 * max(tp, 1):
        reasons.append(f"clean-up threw away {tp_raw - tp} true lesion voxels (lesion in pieces)")
    fp = int((pred & ~case.truth).sum())
    if fp > 0.5 * max(p, 1):
        reasons.append(f"{fp} voxels outside the lesion (a look-alike marked)")
    _, n_truth = ndimage.label(case.truth)
    if n_truth > 1:
        reasons.append(f"the true lesion has {n_truth} separate pieces")
    z = (np.asarray(case.q) - qs.mean(0)) / (qs.std(0) + 1e-6)
    if np.abs(z).max() > 2.0:
        reasons.append(f"contrast unlike the others (FLAIR percentile z-scores "
                       f"{np.round(z, 1).tolist()})")
    return "; ".join(reasons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", type=Path, help="a cross-validation folder (fold-K/...)")
    source.add_argument("--model", help="a model (name or file), scored on the patients it "
                        "never trained on")
    parser.add_argument("--cache", type=Path, default=None,
                        help="with --model: where its predictions are kept")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--post", default=None,
                        help="THRESHOLD,CLEANUP the rest of the report uses (default: the best "
                        "by out-of-fold mean), e.g. 0.5,largest")
    parser.add_argument("--rule", default=None, choices=sorted(SCORE_RULES),
                        help="the confidence score to report (default: the best AUROC)")
    args = parser.parse_args()
    if args.model:
        from medseg.models import resolve_model

        weights = resolve_model(args.model)
        cache = args.cache or REPO / "runs" / f"unseen-{weights.stem}"
        cases = predict_patients(weights, unseen_patients(weights), -1,
                                 cache / ("tta" if args.tta else "plain"), tta=args.tta,
                                 threads=args.threads)
        print(f"# brain-tumour scores of {weights.name} on the {len(cases)} patients it never "
              f"trained on (fold -1), tta={args.tta}")
        source = f"--model {args.model}"
    else:
        folds = sorted(d for d in args.runs.glob("fold-*") if (d / "result.json").is_file())
        cases = [c for run in folds
                 for c in predict_fold(run, tta=args.tta, threads=args.threads)]
        print(f"# out-of-fold brain-tumour scores: {len(cases)} patients from {len(folds)} "
              f"folds ({', '.join(d.name for d in folds)}), tta={args.tta}")
        source = f"--runs {args.runs}"
    print(f"# machine: {cpu_name()}, {platform.machine()}; python benchmarks/tumour_cv.py "
          f"{source}{' --tta' if args.tta else ''}"
          + (f" --post {args.post}" if args.post else ""))
    if not args.model:
        for run in folds:
            r = json.loads((run / "result.json").read_text())
            print(f"# {run.name}: {r['iterations']} iterations, {r['elapsed_s'] / 60:.1f} min")

    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
    cleanups = ["none", "largest", "min:100", "min:500", "min:1000", "rel:0.1", "rel:0.2",
                "mass", "near:5", "near:10", "none+fill", "largest+fill", "largest+fill3d",
                "near:10+fill"]
    table: dict[tuple[float, str], list[float]] = {}
    for t in thresholds:
        for how in cleanups:
            table[(t, how)] = [dice(clean(c.p >= t, how, c.p), c.truth) for c in cases]
    print("\n## Post-processing on the out-of-fold predictions (per-patient Dice)")
    print("threshold, clean-up, mean, median, min, below 0.6")
    for (t, how), v in table.items():
        print(f"  {t:.1f} {how:14s} {np.mean(v):.4f} {np.median(v):.4f} {np.min(v):.4f} "
              f"{int((np.asarray(v) < POOR).sum())}")
    best = max(table, key=lambda k: (round(float(np.mean(table[k])), 4), k[1] == "none"))
    print(f"best by out-of-fold mean: threshold {best[0]}, clean-up {best[1]}: "
          f"{summary(table[best])}")
    if args.post:
        text, how = args.post.split(",")
        best = (float(text), how)
        print(f"shipped (--post {args.post}): {summary(table[best])}")
    t, how = best

    dices = table[best]
    preds = [clean(c.p >= t, how, c.p) for c in cases]
    poor = [d < POOR for d in dices]
    features = [confidence_of(two_class_probabilities(c.p), pred).features
                for c, pred in zip(cases, preds, strict=True)]
    candidates = {name: [score_from_sums(_sums(f), name)[0] for f in features]
                  for name in SCORE_RULES}
    print("\n## Confidence scores (medseg.inference.confidence.SCORE_RULES) on the same "
          f"predictions: AUROC for Dice < {POOR}, and the warning threshold that warns at most "
          "1 in 10 good results")
    print(f"({sum(poor)} poor of {len(poor)} patients; the rule is chosen here on the same "
          "patients, so its AUROC is optimistic)")
    thresholds = {}
    for name, values in candidates.items():
        good = sorted(v for v, bad in zip(values, poor, strict=True) if not bad)
        thresholds[name] = good[int(math.floor(0.1 * len(good)))] if good else 0.0
        caught = sum(v < thresholds[name] and b for v, b in zip(values, poor, strict=True))
        false = sum(v < thresholds[name] and not b for v, b in zip(values, poor, strict=True))
        print(f"  {name}: AUROC {auroc(values, poor):.3f}, Pearson r with Dice "
              f"{np.corrcoef(values, dices)[0, 1]:.3f}; threshold {thresholds[name]:.4f} warns "
              f"{caught} of {sum(poor)} poor and {false} of {len(poor) - sum(poor)} good")
    rule = args.rule or max(candidates, key=lambda n: auroc(candidates[n], poor))
    scores, warn_at = candidates[rule], thresholds[rule]
    warned = [v < warn_at for v in scores]
    print(f"chosen: {rule}, threshold {warn_at:.4f}")

    print("\n## Per patient (chosen post-processing)")
    print("patient, fold, slices, lesion voxels, Dice, confidence, warned")
    by_site: dict[str, list[float]] = defaultdict(list)
    for c, d, s, w in zip(cases, dices, scores, warned, strict=True):
        by_site[c.patient.split("_")[1]].append(d)
        print(f"  {c.patient} {c.fold} {c.truth.shape[2]} {int(c.truth.sum())} {d:.4f} {s:.3f}"
              f" {'yes' if w else 'no'}")
    print(f"all: {summary(dices)}")
    print("\n## Per site")
    for site, v in sorted(by_site.items()):
        print(f"  {site}: {len(v)} patients, {summary(v)}")

    print(f"\n## Why patients below {POOR} fail")
    qs = np.asarray([c.q for c in cases])
    for c, d, pred in zip(cases, dices, preds, strict=True):
        if d < POOR:
            print(f"  {c.patient} Dice {d:.4f}: {why(c, pred, c.p >= t, qs)}")


if __name__ == "__main__":
    main()
