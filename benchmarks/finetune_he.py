"""Fine-tuning ``nuclei`` (fluorescence) on H&E images: AP@0.5 on H&E images kept out of it.

Data: ``../shared/data/dsb2018_brightfield`` (47 H&E images, 256 x 320). A fixed test subset is
held out of every fine-tune: images are grouped by their colour statistics (mean and standard
deviation of R, G, B; average-linkage clustering cut at distance 8: crops of one stained
section share them), and whole groups are drawn in a seeded order until 15 images are out. The
other 32 are the pool; K of them (a seeded draw, nested: the 3 include the 1...) are the
fine-tune's folder (the fine-tune holds back its own validation part of those).

Each cell appends one JSON line to ``benchmarks/results/finetune_he.jsonl`` and the table
``benchmarks/results/finetune_he.txt`` is re-rendered from all lines (CPU named).

Usage (repository root, one measurement at a time):
    .venv/bin/python benchmarks/finetune_he.py shipped
    .venv/bin/python benchmarks/finetune_he.py cell --k 5 --minutes 10 [--scratch]
        [--keep-skill] [--set lr=0.003] [--tag NAME]
    .venv/bin/python benchmarks/finetune_he.py memory --n 400 --minutes 3
    .venv/bin/python benchmarks/finetune_he.py render
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dsb2018_brightfield"
FLUO = ROOT.parent / "shared" / "data" / "dsb2018_nuclei"
RESULTS = ROOT / "benchmarks" / "results"
LINES = RESULTS / "finetune_he.jsonl"
FOLDS = 3
GROUP_DISTANCE = 8.0
SEED = 0
SCRATCH = {"init_from": None, "lr": 0.01, "warmup_iters": 0, "base_filters": 8,
           "max_filters": 64, "max_levels": 5, "normalization": "percentile",
           "patch_size": [256, 256]}


def image_ids() -> list[str]:
    return sorted(p.name[:-4] for p in (DATA / "images").glob("*.png"))


def colour_groups(ids: list[str]) -> dict[str, int]:
    """``{image id: group}``: average-linkage clusters of the images' colour statistics."""
    from PIL import Image
    from scipy.cluster.hierarchy import fcluster, linkage

    feats = []
    for i in ids:
        rgb = np.asarray(Image.open(DATA / "images" / f"{i}.png"))[..., :3].reshape(-1, 3)
        feats.append(np.r_[rgb.mean(0), rgb.std(0)])
    groups = fcluster(linkage(np.array(feats), "average"), GROUP_DISTANCE, "distance")
    return {i: int(g) for i, g in zip(ids, groups, strict=True)}


def split(fold: int = 0, folds: int = FOLDS) -> tuple[list[str], list[str], int]:
    """``(pool, test, number of groups)``: whole colour groups, in one seeded order, dealt into
    ``folds`` test sets of at least a ``folds``-th of the images each (the last takes the
    rest; 15 for the 3 folds); ``fold`` picks the test set, the other images are the pool.
    Fold 0 of the 3 folds is the test set of every figure before the other folds existed.
    More folds leave a larger pool, closer to a fine-tune on all 47."""
    ids = image_ids()
    size = len(ids) // folds
    groups = colour_groups(ids)
    names = sorted(set(groups.values()))
    order = np.random.default_rng(SEED).permutation(len(names))
    dealt: list[list[str]] = [[]]
    for k in order:
        if len(dealt[-1]) >= size and len(dealt) < folds:
            dealt.append([])
        dealt[-1] += [i for i in ids if groups[i] == names[k]]
    test = dealt[fold]
    pool = [i for i in ids if i not in set(test)]
    return pool, sorted(test), len(names)


def draw(pool: list[str], k: int, number: int = 0) -> list[str]:
    """K images of the pool (draw 0: nested, one seeded order for every K; draws 1, 2...:
    other orders)."""
    order = np.random.default_rng(SEED + 1 + number).permutation(len(pool))
    return [pool[i] for i in order[:k]]


def make_folder(ids: list[str], folder: Path, source: Path = DATA, *,
                copies: int = 1) -> Path:
    """A training folder of symbolic links (``copies`` > 1: each image under several names)."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        for c in range(copies):
            name = f"{i}.png" if copies == 1 else f"{i}-{c}.png"
            for sub in ("images", "masks"):
                os.symlink(source / sub / f"{i}.png", folder / sub / name)
    return folder


def score(model: str | Path, ids: list[str], source: Path = DATA, *,
          diameter: float | str | dict[str, float] | None = None) -> dict:
    """Pooled AP@0.5 of ``model`` on ``ids`` through the engine (one thread); ``diameter``:
    ``object_diameter`` for every image, or one per image id."""
    import torch

    from medseg.inference import Segmenter
    from medseg.io import read_image
    from medseg.metrics import pooled_scores

    torch.set_num_threads(1)
    seg = Segmenter.from_file(model, device="cpu",
                              **({"object_diameter": diameter}
                                 if diameter is not None and not isinstance(diameter, dict)
                                 else {}))

    def pairs():
        for i in ids:
            if isinstance(diameter, dict):
                seg_i = Segmenter.from_file(model, device="cpu", object_diameter=diameter[i])
            else:
                seg_i = seg
            image = read_image(source / "images" / f"{i}.png")
            truth = read_image(source / "masks" / f"{i}.png")
            yield np.asarray(truth.array[0]), np.asarray(seg_i.predict(image).labels.array[0])

    s = pooled_scores(pairs())
    ap, n_true, n_pred = s["ap50_pooled"], s["n_true"], s["n_pred"]
    # AP = TP / (TP + FP + FN) = TP / (n_true + n_pred - TP)
    tp = round(ap * (n_true + n_pred) / (1 + ap)) if n_true + n_pred else 0
    return {"ap50": round(ap, 4), "n_true": n_true, "n_pred": n_pred, "tp": tp}


def fluorescence_val() -> list[str]:
    """The ``nuclei`` card's validation images (as benchmarks/eval_nuclei.py picks them)."""
    from medseg.model_card import read_model_card
    from medseg.models import resolve_model

    return sorted(read_model_card(resolve_model("nuclei")).training["split"]["val"])


def fluorescence_train() -> list[str]:
    from medseg.model_card import read_model_card
    from medseg.models import resolve_model

    return sorted(read_model_card(resolve_model("nuclei")).training["split"]["train"])


def commit() -> str:
    """The repository's commit, with ``+changes`` when the training or transforms code differs
    from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "medseg/training",
                            "medseg/transforms", "medseg/model_card.py"], cwd=ROOT)
    return head + ("+changes" if dirty.returncode else "")


def append(row: dict) -> None:
    row.setdefault("commit", COMMIT)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(LINES, "a") as f:
        f.write(json.dumps(row) + "\n")
    render()


def cmd_shipped(args: argparse.Namespace) -> None:
    """The shipped model as it is, or (``--rule``) its weights with a channel rule in the card
    and no training at all; ``--diameter``: the images zoomed to the model's object size
    (``auto``: each image's estimate); ``--all``: also scored on all 47 images (none of them
    ever trained on)."""
    from medseg.model_card import load_model, save_model
    from medseg.models import resolve_model

    pool, test, n_groups = split()
    model: str | Path = "nuclei"
    if args.rule:
        net, card = load_model(resolve_model("nuclei"))
        card.channel_rule = args.rule
        model = save_model(Path(tempfile.mkdtemp()) / "ruled.safetensors", net, card)
    diameter = (None if args.diameter is None else
                args.diameter if args.diameter == "auto" else float(args.diameter))
    row = {"kind": "shipped", "model": "nuclei", "rule": args.rule,
           "test": score(model, test, diameter=diameter),
           "fluorescence": score(model, fluorescence_val(), FLUO) if args.fluo else None}
    from medseg.training.runtime import cpu_name

    row["cpu"] = cpu_name()
    if diameter is not None:
        row["diameter"] = diameter
    if args.all:
        row["all47"] = score(model, sorted(pool + test), diameter=diameter)
    append(row)


def cmd_cell(args: argparse.Namespace) -> None:
    from medseg.training.finetune import FinetuneOptions, finetune
    from medseg.training.runtime import cpu_name

    if args.fold >= args.folds:
        raise SystemExit(f"--fold {args.fold}: there are {args.folds} folds (0 to "
                         f"{args.folds - 1})")
    pool, test, _ = split(args.fold, args.folds)
    ids = pool if args.k == 0 else draw(pool, args.k, args.draw)
    overrides = dict(SCRATCH) if args.scratch else {}
    import yaml

    for text in args.set:
        key, value = text.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    work = Path(tempfile.mkdtemp(prefix="ft-he-"))
    folder = make_folder(ids, work / "data")
    keep = None
    if args.keep_skill:
        keep = make_folder(fluorescence_train(), work / "keep", FLUO)
    os.environ["MEDSEG_MODELS_DIR"] = str(work / "models")
    t0 = time.monotonic()
    result = finetune(FinetuneOptions(base="nuclei", data=folder, minutes=args.minutes,
                                      export=work / "out.safetensors", overrides=overrides,
                                      seed=args.seed, num_threads=1, keep_skill=keep,
                                      object_scale=not args.native_scale))
    wall = time.monotonic() - t0
    row = {"kind": "cell", "tag": args.tag, "k": len(ids), "draw": args.draw,
           "fold": args.fold, "folds": args.folds, "all_pool": args.k == 0,
           "object_scale": not args.native_scale, "minutes": args.minutes,
           "scratch": args.scratch, "keep_skill": args.keep_skill, "overrides": overrides,
           "seed": args.seed, "steps": result.steps, "wall_min": round(wall / 60, 2),
           "own_before": round(result.before, 4), "own_after": round(result.after, 4),
           "improved": result.improved, "hold_out": len(result.val_cases),
           "test": score(result.model_path, test), "cpu": cpu_name(),
           "load_avg_15min": round(os.getloadavg()[2], 2)}
    from medseg.model_card import read_model_card

    card = read_model_card(result.model_path)
    story = card.training["finetune"]
    row.update({k: story.get(k) for k in ("base_with_rule", "trained", "kept_base_weights")})
    row["instances"] = card.instances
    row["channel_rule"] = card.channel_rule
    row["patch"] = story.get("patch")
    if args.fluo:
        row["fluorescence"] = score(result.model_path, fluorescence_val(), FLUO)
    append(row)
    if args.keep:
        args.keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(result.model_path, args.keep)
        shutil.copy(result.card_path, args.keep.with_suffix(".json"))
        shutil.copytree(work / "models" / "runs", args.keep.with_suffix(".runs"),
                        dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(row))


def cmd_diameter(args: argparse.Namespace) -> None:
    """A kept fine-tuned model (``cell --keep``) on its fold's test images at native pixels,
    with ``object_diameter="auto"`` after 1 and 2 re-estimates, and zoomed by each image's
    true median nucleus diameter (index.csv; what a perfect estimate would give)."""
    import math

    import medseg.inference.engine as engine
    from medseg.training.runtime import cpu_name

    _, test, _ = split(args.fold)
    rows = {r["image_id"]: r for r in _index()}
    true = {i: 2 * math.sqrt(float(rows[i]["median_nucleus_area_px"]) / math.pi) for i in test}
    from medseg.model_card import read_model_card

    trained = read_model_card(args.model).object_diameter_px  # its own size: no zoom
    out = {}
    for name, diameter, passes in (("native", trained, 0), ("auto, 1 re-estimate", "auto", 1),
                                   ("auto, 2 re-estimates", "auto", 2), ("true", true, 0)):
        engine.AUTO_DIAMETER_PASSES = passes or engine.AUTO_DIAMETER_PASSES
        out[name] = score(args.model, test, diameter=diameter)["ap50"]
        print(name, out[name])
    append({"kind": "diameter", "model": str(args.model), "fold": args.fold, "ap50": out,
            "cpu": cpu_name()})


def _index() -> list[dict]:
    import csv

    with open(DATA / "index.csv") as f:
        return list(csv.DictReader(f))


def cmd_memory(args: argparse.Namespace) -> None:
    """Peak RSS and steps/s of a fine-tune on ``n`` images (the pool repeated under other
    names), in a child process so its peak is its own."""
    if args.child:
        from medseg.training.finetune import FinetuneOptions, finetune

        pool, _, _ = split()
        work = Path(args.child)
        copies = -(-args.n // len(pool))
        folder = make_folder(pool, work / "data", copies=copies)
        names = sorted((folder / "images").iterdir())
        for extra in names[args.n:]:  # exactly n images
            extra.unlink()
            (folder / "masks" / extra.name).unlink()
        os.environ["MEDSEG_MODELS_DIR"] = str(work / "models")
        result = finetune(FinetuneOptions(base="nuclei", data=folder, minutes=args.minutes,
                                          export=work / "out.safetensors", num_threads=1,
                                          run_dir=work / "run",
                                          overrides={"data.stream": not args.in_memory}))
        from medseg.model_card import read_model_card

        # steps per second between the first and the last logged training epoch (the set-up,
        # which reads every case, excluded); the whole training phase as a fallback
        rows = [r.split(",") for r in (work / "run" / "train" / "metrics.csv").read_text()
                .splitlines()[1:] if r.startswith("train")]
        phases = read_model_card(result.model_path).training["finetune"]["phase_start_s"]
        if len(rows) >= 2:
            (it0, t0), (it1, t1) = ((float(r[1]), float(r[3])) for r in (rows[0], rows[-1]))
            rate = (it1 - it0) / (t1 - t0)
        else:
            rate = result.steps / (phases["scoring"] - phases["training"])
        (work / "out.json").write_text(json.dumps({
            "steps": result.steps, "steps_per_s": round(rate, 3),
            "train_cases": len(result.train_cases), "phase_start_s": phases}))
        return
    from medseg.training.runtime import cpu_name

    work = Path(tempfile.mkdtemp(prefix="ft-mem-"))
    subprocess.run([sys.executable, __file__, "memory", "--n", str(args.n), "--minutes",
                    str(args.minutes), "--child", str(work)]
                   + (["--in-memory"] if args.in_memory else []), check=True)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = json.loads((work / "out.json").read_text())
    append({"kind": "memory", "n": args.n, "minutes": args.minutes,
            "in_memory": args.in_memory,
            "peak_rss_mb": round(peak_mb), **out, "cpu": cpu_name(),
            "load_avg_15min": round(os.getloadavg()[2], 2)})
    shutil.rmtree(work, ignore_errors=True)


def grid_tables(rows: list[dict], pool_size: int, recipe: str) -> list[str]:
    """The K x minutes table (draw 0) and the draws table of ``rows`` (one recipe)."""
    out: list[str] = []
    grid = {(r["k"], r["minutes"]): r["test"]["ap50"] for r in rows
            if r.get("tag") in ("grid", "cv") and not r.get("draw") and not r.get("seed")}
    if grid:
        out += ["", f"test AP@0.5 after fine-tuning on K images for N minutes, {recipe}: draw "
                "0; latest run of each cell; - = not run; small K stop before the budget, at "
                "300 patches per image, so their columns would repeat:",
                f"{'K':>6} " + " ".join(f"{m:>7g} min" for m in (5, 10, 20))]
        for k in (1, 3, 5, 10, pool_size):
            label = "all " + str(k) if k == pool_size else str(k)
            out.append(f"{label:>6} " + " ".join(
                f"{grid[(k, m)]:>11.3f}" if (k, m) in grid else f"{'-':>11}"
                for m in (5.0, 10.0, 20.0)))
    latest = {(r["k"], r.get("draw", 0)): r["test"]["ap50"] for r in rows
              if r.get("tag") == "grid" and r["minutes"] == 10.0 and r["k"] < pool_size}
    draws: dict[int, list[float]] = {}
    for (k, _), value in sorted(latest.items()):
        draws.setdefault(k, []).append(value)
    if any(len(v) > 1 for v in draws.values()):
        out += ["", f"test AP@0.5 over different draws of K images, {recipe} (10 min; latest "
                "run of each draw):"]
        for k, values in sorted(draws.items()):
            out.append(f"  K={k}: mean {np.mean(values):.3f} over {len(values)} draw(s) "
                       f"({', '.join(f'{v:.3f}' for v in values)})")
    return out


def _pooled_ap(tests: list[dict]) -> float:
    """AP@0.5 pooled over several scored runs' test images: TP / (n_true + n_pred - TP) summed
    over the runs (older rows kept only AP, n_true and n_pred; their TP is solved from them)."""
    tp = sum(int(x.get("tp", round(x["ap50"] * (x["n_true"] + x["n_pred"]) / (1 + x["ap50"]))))
             for x in tests)
    return tp / (sum(x["n_true"] + x["n_pred"] for x in tests) - tp)


def fitted_patch(row: dict) -> dict:
    """``{"patch_size (speed fit)": [...]}`` when the fine-tune halved its patch to fit the
    machine's speed (``medseg.training.finetune_speed``), else ``{}``."""
    fit = row.get("patch") or {}
    if fit and fit["patch_size"] != fit["card_patch"]:
        return {"patch_size (speed fit)": fit["patch_size"]}
    return {}


def without_bf16(row: dict) -> bool:
    """The run's CPU had no bf16 instructions (it trained in float32). Runs recorded before
    the CPU's instruction sets were (``cpu`` "AMD EPYC" alone) ran on an AMD EPYC with
    avx512_bf16, in bf16 autocast."""
    return "no bf16" in row.get("cpu", "")


def cross_validation(rows: list[dict], machine: str = "", folds: int = FOLDS) -> list[str]:
    """Lines of the all-pool fine-tunes over ``folds`` colour-group folds: each fold's test
    AP@0.5 and the AP@0.5 pooled over every image, each scored by the fine-tune that did not
    see it. Runs are grouped by recipe (object scale, options, minutes, seed); the latest run
    per fold counts, and the commits they ran are listed. ``machine``: the CPU the rows ran
    on, for the heading."""
    runs: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if not r.get("all_pool", r["k"] == 31 and not r.get("fold")):
            continue
        if r.get("folds", FOLDS) != folds:
            continue
        key = (json.dumps({**r["overrides"], **fitted_patch(r)}, sort_keys=True), r["minutes"],
               r.get("seed", 0), r["scratch"], r["keep_skill"], r.get("object_scale", False))
        runs.setdefault(key, {})[r.get("fold", 0)] = r
    done = {key: by_fold for key, by_fold in runs.items() if len(by_fold) == folds}
    if not done:
        return []
    sizes = sorted({r["k"] for by_fold in done.values() for r in by_fold.values()})
    out = ["", f"fine-tuned on the whole pool{machine}, {folds} folds by colour group (each "
           "fold's test set is whole colour groups, the pool the other images"
           + ("; fold 0 is the test set above" if folds == FOLDS else "")
           + f"; pools of {sizes[0]}-{sizes[-1]} images, of which the fine-tune holds back its "
           "own validation part): test AP@0.5 per fold, and pooled over all 47 images, each "
           "scored by the fine-tune that did not see it",
           f"{'recipe':<40} {'min':>4} " + " ".join(f"{'fold ' + str(f):>7}"
                                                   for f in range(folds)) + f" {'pooled':>7}"]
    pooled_of = {key: _pooled_ap([by_fold[f]["test"] for f in range(folds)])
                 for key, by_fold in done.items()}
    for (overrides, minutes, seed, scratch, keep, scale), by_fold in done.items():
        t = [by_fold[f]["test"] for f in range(folds)]
        pooled = pooled_of[(overrides, minutes, seed, scratch, keep, scale)]
        name = ("one object scale " if scale else "native scale ") + \
            ("from scratch " if scratch else "") + ("+keep-skill " if keep else "") + \
            (overrides if overrides != "{}" else "as committed") + \
            (f" seed {seed}" if seed else "")
        commits = sorted({by_fold[f]["commit"] for f in range(folds)})
        out.append(f"{name:<40} {minutes:>4g} " + " ".join(f"{x['ap50']:>7.3f}" for x in t)
                   + f" {pooled:>7.3f}  [{', '.join(commits)}]")
    return out + over_seeds(pooled_of)


def over_seeds(pooled_of: dict[tuple, float]) -> list[str]:
    """Per recipe run with several training seeds (each seed also holds back other images),
    or run at a seed the committed recipe (no options) was run at: the pooled AP@0.5 of each
    seed and their mean, and against the committed recipe the mean paired difference.
    ``pooled_of``: ``{(options, minutes, seed, scratch, keep-skill, one scale): pooled AP}``."""
    pooled: dict[tuple, dict[int, float]] = {}
    for (overrides, minutes, seed, scratch, keep, scale), value in pooled_of.items():
        pooled.setdefault((overrides, minutes, scratch, keep, scale), {})[seed] = value
    out: list[str] = []
    for key, by_seed in pooled.items():
        base = pooled.get(("{}", *key[1:]), {})
        common = sorted(set(base) & set(by_seed))
        if len(by_seed) < 2 and (key[0] == "{}" or not common):
            continue
        if not out:
            out += ["", "over training seeds (pooled AP@0.5 over all 47 images of each seed; "
                    "paired = the mean difference from the committed recipe at the same seeds)"]
        overrides, minutes = key[0], key[1]
        line = (f"  {overrides if overrides != '{}' else 'as committed':<40} {minutes:>4g} min: "
                + ", ".join(f"seed {s} {v:.3f}" for s, v in sorted(by_seed.items()))
                + f"; mean {np.mean(list(by_seed.values())):.3f}")
        if overrides != "{}" and common:
            diff = [by_seed[s] - base[s] for s in common]
            line += f"; paired {np.mean(diff):+.3f} over {len(common)} seed(s)"
        out.append(line)
    return out


def few_images_over_folds(rows: list[dict], machine: str = "",
                          tags: tuple[str, ...] = ("grid", "kfold")) -> list[str]:
    """Lines of the few-image fine-tunes (K < the pool, 10 min, one object scale, tagged one of
    ``tags``: by default ``grid`` on fold 0, ``kfold`` on the others) over the colour-group
    folds: per K and fold the test AP@0.5 of each draw, and per draw number the AP@0.5 pooled
    over every fold's test images (all 47 images, each scored by a fine-tune that did not see
    it); latest run of each cell."""
    latest: dict[tuple[int, int, int], dict] = {}
    for r in rows:
        if (r["kind"] == "cell" and r.get("commit") and r.get("object_scale")
                and r["minutes"] == 10.0 and not r["scratch"] and not r["keep_skill"]
                and not r["overrides"] and r["k"] <= 10
                and r.get("tag") in tags and r.get("folds", FOLDS) == FOLDS):
            latest[(r["k"], r.get("fold", 0), r.get("draw", 0))] = r
    out: list[str] = []
    for k in sorted({key[0] for key in latest}):
        folds: dict[int, dict[int, dict]] = {f: {} for f in range(FOLDS)}
        for (kk, f, d), r in latest.items():
            if kk == k:
                folds[f][d] = r["test"]
        if sum(1 for v in folds.values() if v) < 2:
            continue
        if not out:
            out += ["", f"few images over the folds{machine} (one object scale, 10 min): test "
                    "AP@0.5 of "
                    "each draw of K images from the fold's pool; pooled = one draw per fold, "
                    "over all 47 images, each scored by a fine-tune that did not see it"]
        for f, by_draw in folds.items():
            if by_draw:
                values = [by_draw[d]["ap50"] for d in sorted(by_draw)]
                out.append(f"  K={k} fold {f}: mean {np.mean(values):.3f} over {len(values)} "
                           f"draw(s) ({', '.join(f'{v:.3f}' for v in values)})")
        pooled = [_pooled_ap([folds[f][d] for f in range(FOLDS)])
                  for d in sorted(set.intersection(*(set(v) for v in folds.values())))]
        if pooled:
            out.append(f"  K={k} pooled over the {FOLDS} folds: mean {np.mean(pooled):.3f} over "
                       f"{len(pooled)} draw(s) ({', '.join(f'{v:.3f}' for v in pooled)})")
    return out


def render() -> None:
    rows = [json.loads(line) for line in LINES.read_text().splitlines()] if LINES.exists() \
        else []
    pool, test, n_groups = split()
    out = [
        "Fine-tuning nuclei (fluorescence) on H&E: benchmarks/finetune_he.py",
        f"machine: AMD EPYC, {platform.machine()}, 2 cores shared with other trainings "
        "(the 15-minute load average of each run is printed: 2 means both cores busy); torch 1 "
        "thread per run; the card's recipe (amp auto) trains in bf16 autocast on the CPU with "
        "avx512_bf16 (every table but the last ones, and every run recorded as 'AMD EPYC' "
        "alone) and in float32 on the CPU without bf16 (AVX2 only: its own tables, marked)",
        f"data: {DATA.name}, {len(pool) + len(test)} images; test = {len(test)} images (whole "
        f"colour groups of {n_groups}, never fine-tuned on); pool = {len(pool)}; K images = "
        "a seeded nested draw from the pool; 'all' = the whole pool",
        "AP@0.5 = TP/(TP+FP+FN) at IoU 0.5 pooled over the test images, through the engine "
        "(the card's channel rule and instance post-processing)",
        "own = the fine-tune's own held-back part of its K images (base -> fine-tuned)",
        "",
    ]
    for r in rows:
        if r["kind"] == "shipped":
            fl = r.get("fluorescence")
            rule = (f" with channel rule {r['rule']} (no training)" if r.get("rule")
                    else "") + (f", object diameter {r['diameter']}" if r.get("diameter")
                                else "")
            every = r.get("all47")
            out.append(f"shipped nuclei{rule}: test AP@0.5 {r['test']['ap50']:.3f} (objects "
                       f"{r['test']['n_pred']}/{r['test']['n_true']})"
                       + (f"; all 47 images {every['ap50']:.3f} (objects {every['n_pred']}/"
                          f"{every['n_true']})" if every else "")
                       + (f"; fluorescence validation AP@0.5 {fl['ap50']:.3f}" if fl else "")
                       + (f" [{r['cpu']}]" if r.get("cpu") else ""))
    cells = [r for r in rows if r["kind"] == "cell" and r.get("commit")]
    folded = [r for r in cells if not without_bf16(r)]
    final = [r for r in folded if not r.get("fold")]
    for scale in (True, False):
        out += grid_tables([r for r in final if bool(r.get("object_scale")) == scale],
                           len(pool), "one object scale (the recipe as committed)" if scale
                           else "native scale (before one object scale)")
    out += cross_validation(folded)
    out += few_images_over_folds(folded)
    float32 = [r for r in cells if without_bf16(r)]
    avx2 = " on the CPU without bf16 (AMD EPYC, AVX2 only: float32)"
    out += cross_validation(float32, avx2)
    out += cross_validation(float32, avx2, folds=5)
    out += few_images_over_folds(float32, avx2)
    out += few_images_over_folds(float32, avx2 + ", the code before the rule alone was sized "
                                 "(a4e1b8c)", ("rule-native",))
    out += ["", "every run (commit = the code it ran; rows without one ran before the recipe "
            "was final: no step cap, instance settings re-chosen on any hold-out, no "
            "rule-alone comparison):",
            f"{'K':>4} {'min':>5} {'kind':<22} {'steps':>6} {'wall':>6} {'own':>13} "
            f"{'test AP@0.5':>11} {'fluo AP@0.5':>11}  settings"]
    for r in rows:
        if r["kind"] != "cell":
            continue
        kind = ("from scratch" if r["scratch"] else "fine-tune") + \
            (" +keep-skill" if r["keep_skill"] else "") + \
            (" 1-scale" if r.get("object_scale") else "")
        fl = r.get("fluorescence")
        extra = {k: v for k, v in r["overrides"].items() if k not in SCRATCH or
                 not r["scratch"]} | fitted_patch(r)
        out.append(f"{r['k']:>4} {r['minutes']:>5g} {kind:<22} {r['steps']:>6} "
                   f"{r['wall_min']:>5.1f}m {r['own_before']:.3f}->{r['own_after']:.3f} "
                   f"{r['test']['ap50']:>11.3f} {(fl['ap50'] if fl else float('nan')):>11.3f}"
                   f"  {r.get('tag') or ''}{' draw ' + str(r['draw']) if r.get('draw') else ''}"
                   f"{' fold ' + str(r['fold']) if r.get('fold') else ''}"
                   f"{' seed ' + str(r['seed']) if r.get('seed') else ''}"
                   f" {extra or ''}"
                   + (f" load {r['load_avg_15min']}" if "load_avg_15min" in r else "")
                   + (f" [{r['commit']}]" if r.get("commit") else "")
                   + (" AVX2 float32" if without_bf16(r) else "")
                   + (" kept base weights+rule" if r.get("kept_base_weights") else ""))
    sized = [r for r in rows if r["kind"] == "diameter"]
    if sized:
        out += ["", "object diameter at inference, a model fine-tuned at one object scale on "
                "its fold's test images (pooled AP@0.5; 'true': each image zoomed by its true "
                "median nucleus diameter):"]
        for r in sized:
            out.append(f"  fold {r['fold']} [{r['commit']}]: " + ", ".join(
                f"{k} {v:.3f}" for k, v in r["ap50"].items()) + f"  ({Path(r['model']).name})")
    mem = [r for r in rows if r["kind"] == "memory"]
    if mem:
        out += ["", "memory and speed (fine-tune, 1 thread; peak RSS of the whole process):"]
        for r in mem:
            phases = r.get("phase_start_s") or {}
            how = "in memory" if r.get("in_memory") else "streamed"
            out.append(f"  {r['n']:>4} images {how} ({r['train_cases']} trained on), "
                       f"{r['minutes']:g}"
                       f" min: {r['steps_per_s']:.2f} steps/s, peak RSS {r['peak_rss_mb']} MB"
                       f" (load average {r.get('load_avg_15min')}); phases start at {phases} s")
    (RESULTS / "finetune_he.txt").write_text("\n".join(out) + "\n")
    print("\n".join(out))


COMMIT = "?"


def main() -> None:
    global COMMIT
    COMMIT = commit()  # before the run: the code the run imported
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("shipped")
    p.add_argument("--fluo", action="store_true")
    p.add_argument("--rule", default=None, help="score the weights with this channel rule")
    p.add_argument("--diameter", default=None,
                   help="object diameter at inference: pixels, or 'auto' (each image's estimate)")
    p.add_argument("--all", action="store_true", help="also score all 47 images")
    p = sub.add_parser("cell")
    p.add_argument("--k", type=int, required=True, help="images (0: the whole pool)")
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--scratch", action="store_true")
    p.add_argument("--keep-skill", action="store_true")
    p.add_argument("--fluo", action="store_true", help="also score the fluorescence images")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draw", type=int, default=0, help="which draw of K images (0: nested)")
    p.add_argument("--tag", default="")
    p.add_argument("--native-scale", action="store_true",
                   help="fine-tune on the images as they are (no zoom to one object scale)")
    p.add_argument("--fold", type=int, default=0,
                   help="which colour-group fold is the test set (0: the first figures')")
    p.add_argument("--folds", type=int, default=FOLDS,
                   help="how many colour-group folds the images are dealt into")
    p.add_argument("--keep", type=Path, help="copy the fine-tuned model (and its card) here")
    p = sub.add_parser("diameter")
    p.add_argument("model", type=Path)
    p.add_argument("--fold", type=int, default=0)
    p = sub.add_parser("memory")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--child", default=None)
    p.add_argument("--in-memory", action="store_true",
                   help="prepared cases kept in memory (data.stream false), for comparison")
    sub.add_parser("render")
    args = parser.parse_args()
    {"shipped": cmd_shipped, "cell": cmd_cell, "memory": cmd_memory, "diameter": cmd_diameter,
     "render": lambda a: render()}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
