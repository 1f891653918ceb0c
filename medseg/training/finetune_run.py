"""One fine-tune's phases (see :func:`medseg.training.finetune.finetune`): check, hold out,
score the base, train, score, save."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DatasetError, ModelError
from medseg.model_card import ModelCard, file_sha256, read_model_card
from medseg.models import MODEL_SUFFIX, list_models, user_models_dir
from medseg.training.config import TrainConfig
from medseg.training.finetune import (
    FinetuneOptions,
    FinetuneProgress,
    FinetuneResult,
    base_model_path,
    check_cancel,
)
from medseg.training.finetune_card import write_finetuned_model
from medseg.training.finetune_data import (
    FolderCheck,
    HoldOut,
    check_pairs,
    hold_out,
    index_folder,
)
from medseg.training.finetune_recipe import (
    ITERS_PER_EPOCH,
    finetune_config,
    max_epochs,
    write_manifest,
)
from medseg.training.finetune_score import (
    metric_name,
    score_instance_settings,
    score_model,
    settings_variants,
)
from medseg.training.finetune_speed import PatchFit, can_halve, fitted_patch, step_seconds
from medseg.transforms.channels import rule_channels

logger = logging.getLogger(__name__)

#: How many images the channel rule's polarity is judged on.
RULE_SAMPLE = 5
#: Modalities whose multi-channel images are channels to pick, never colours to convert.
RADIOLOGY = ("MR", "CT", "PT", "US", "NM", "CR", "DX", "MG", "XA", "RF")


class FinetuneRun:
    """The live state of one fine-tune."""

    def __init__(self, options: FinetuneOptions, *,
                 progress: Callable[[FinetuneProgress], None] | None,
                 cancel: Callable[[], bool] | None, started: float) -> None:
        self.options, self.progress, self.cancel, self.started = options, progress, cancel, started
        self.budget_s = options.minutes * 60.0
        self.base_path = base_model_path(options.base)
        self.base = read_model_card(self.base_path)
        #: the weights training starts from: the base's, or the base's widened to the rule's
        #: channels (:func:`widened`)
        self.start_path = self.base_path
        self.name = options.name or (options.export.name[: -len(MODEL_SUFFIX)]
                                     if options.export else default_name(self.base.name))
        self.run_dir = options.run_dir or user_models_dir() / "runs" / self.name
        self.step, self.val_metric = 0, None
        self.phase_start: dict[str, float] = {}
        self.total_steps, self.reserve_s = 0, 0.0
        self.instances = self.base.instances is not None
        #: the objects' diameter every training image is zoomed to (None: as they are)
        self.scale_to: float | None = None
        self.zooms: dict[str, float] = {}
        #: the patch fitted to this machine's speed (None: the card's, never probed)
        self.patch_fit: PatchFit | None = None

    # -- progress ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(self, phase: str) -> None:
        check_cancel(self.cancel)
        if phase not in self.phase_start:
            self.phase_start[phase] = round(self.elapsed(), 1)
        if self.progress is None:
            return
        elapsed = self.elapsed()
        self.progress(FinetuneProgress(step=self.step, elapsed_s=elapsed,
                                       budget_s=self.budget_s, eta_s=self.eta(elapsed),
                                       val_metric=self.val_metric, phase=phase))

    def eta(self, elapsed: float) -> float:
        """Seconds left: the budget's remainder, or sooner when the steps will run out first
        (at the pace of the steps so far, plus the time kept for scoring)."""
        left = max(0.0, self.budget_s - elapsed)
        trained = elapsed - self.phase_start.get("training", elapsed)
        if self.step >= 10 and self.total_steps and trained > 0:
            steps_left = max(0, self.total_steps - self.step)
            left = min(left, steps_left * trained / self.step + self.reserve_s)
        return left

    # -- phases -----------------------------------------------------------------------------
    def execute(self) -> FinetuneResult:
        options = self.options
        self.report("checking")
        self.config(Path("cases.json"), [], rule=None, check=None, minutes=options.minutes)
        check = check_pairs(index_folder(options.data), self.base)
        rule = self.channel_rule(check)
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        slicewise = self.base.spatial_dims == 2 and check.spatial_dims == 3
        if options.object_scale and self.instances and self.base.spatial_dims == 2 \
                and check.spatial_dims == 2 and check.units == {"px"}:
            # images with a pixel size would make a card in micrometres, whose objects have
            # no size in pixels to zoom to: those are trained on as they are
            self.scale_to = self.base.object_diameter_px
        held = hold_out(check.pairs, seed=options.seed, band_dir=self.run_dir / "bands",
                        instances=self.instances, slicewise=slicewise)
        logger.info("%s", held.describe())
        self.report("scoring base")
        t0 = time.monotonic()
        before = self.score(self.base_path, held)
        logger.info("base %s: %s %.4f on the held-back images", self.base.name,
                    metric_name(self.instances), before)
        ruled = self.ruled_base(rule)
        # scored as the fine-tuned model will be: at one object scale, each image sized to the
        # base's objects (``object_diameter="auto"``: the base learnt its objects at that size;
        # the rule alone on all 47 H&E images of benchmarks/results/finetune_he.txt, pooled
        # AP@0.5 0.492 at native pixels, 0.507 sized) with the base's settings, not the best of
        # a grid chosen on these same images
        with_rule, ruled_instances = (
            self.score_weights(ruled, held, scaled=self.scale_to is not None)
            if ruled is not None else (None, None))
        if with_rule is not None:
            logger.info("base %s's weights with the channel rule %r: %.4f", self.base.name,
                        rule, with_rule)
        scoring_s = (time.monotonic() - t0) / (2 if ruled is not None else 1)
        tuning_s = 0.05 * len(settings_variants(self.base.instances or {})) * len(held.val) \
            if self.instances else 0.0
        result = self.train(held, rule, check, reserve_s=scoring_s * 1.5 + tuning_s + 5.0)
        self.report("scoring")
        trained, instances = self.score_weights(result.best_path, held,
                                                scaled=self.scale_to is not None)
        # the better weights on the held-back images: the fine-tuned ones, or the base's with
        # the channel rule alone when training did not beat them
        kept_base = with_rule is not None and with_rule >= trained
        after = with_rule if kept_base and with_rule is not None else trained
        if kept_base:
            instances = ruled_instances
        self.val_metric = after
        improved = bool(after > before)
        record = self.record(check, held, rule, before=before, after=after,
                             steps=result.iterations, improved=improved)
        record.update({"base_with_rule": None if with_rule is None else round(with_rule, 4),
                       "trained": round(trained, 4), "kept_base_weights": kept_base,
                       "instances_rechosen": _without_diameter(instances)
                       != _without_diameter(self.base.instances)})
        self.report("saving")
        destination = self.destination(improved)
        model_path, card_path = write_finetuned_model(
            result.best_path, destination, base=self.base, name=self.name, record=record,
            instances=instances, weights=ruled if kept_base else None)
        out = FinetuneResult(model_path=model_path, card_path=card_path,
                             metric=metric_name(self.instances), before=before, after=after,
                             improved=improved, candidate=not improved, steps=result.iterations,
                             with_rule=with_rule, kept_base_weights=kept_base,
                             patch=self.patch_fit.to_dict()
                             if self.patch_fit is not None and self.patch_fit.halved else None,
                             minutes=self.elapsed() / 60.0,
                             train_cases=[p.case_id for p in held.train],
                             val_cases=[p.case_id for p in held.val])
        logger.info("%s", out.summary())
        self.report("done")
        return out

    def channel_rule(self, check: FolderCheck) -> str | None:
        """``data.channel_rule`` of ``overrides``, else the card's rule, else for a
        one-channel microscopy model (anything but a radiology modality, whose multi-channel
        images are picked by the card's ``input_channels``) the luminance, inverted per image
        when the images' intensities are the negative of the base model's training images
        (:func:`polarity_rule`): dark nuclei on a bright stain become bright ones on black."""
        chosen = self.options.overrides.get("data.channel_rule") or self.base.channel_rule
        if chosen is None and self.base.image_channels == 1 \
                and self.base.modality.upper() not in RADIOLOGY:
            return polarity_rule(check, self.base)
        if chosen is None and len(check.channels) > 1:
            raise DatasetError(f"{self.options.data}: the images mix "
                               f"{sorted(check.channels)} channels; give model "
                               f"{self.base.name!r} images of one kind")
        return chosen

    def ruled_base(self, rule: str | None) -> Path | None:
        """The base's weights with ``rule`` in the card (in the run folder), when the rule is
        not the base's own: what the rule alone does, without any training."""
        if rule is None or rule == self.base.channel_rule or (
                "init_from" in self.options.overrides and not self.options.overrides["init_from"]):
            return None  # no new rule, or a run from scratch (not from the base's weights)
        from medseg.model_card import load_model, save_model

        model, card = load_model(self.base_path)
        wider = rule_channels(rule) != card.image_channels
        if wider:
            model, card = widened(model, card, rule_channels(rule))
        card.channel_rule = rule
        card.input_channels = None
        path = save_model(self.run_dir / "base-with-rule.safetensors", model, card)
        if wider:
            self.start_path = path
        return path

    def score_weights(self, model: Path, held: HoldOut, *, scaled: bool = False
                      ) -> tuple[float, dict[str, Any] | None]:
        """The figure of ``model`` on the held-back cases, and the instance settings that
        gave it (the base's, or others re-chosen on them). ``scaled``: the model's objects are
        at the base's scale (it learnt at one object scale, or it is the base); it is scored
        as it will run, sizing each image (``object_diameter="auto"``, with the base's
        settings: they were chosen at that scale)."""
        if scaled:
            from medseg.model_card import load_model, save_model

            spec = {**(self.base.instances or {}), "object_diameter": "auto"}
            network, card = load_model(model)  # a training checkpoint: the method alone
            card.instances = spec
            scored = save_model(self.run_dir / "scored.safetensors", network, card)
            return (score_model(scored, held.val, instances=True, device=self.options.device,
                                cancel=self.cancel), spec)
        if not self.instances:
            return self.score(model, held), self.base.instances
        spec_ap, instances, best = score_instance_settings(
            model, held.val, spec=dict(self.base.instances or {}),
            device=self.options.device, cancel=self.cancel)
        if instances != self.base.instances:
            logger.info("instance settings re-chosen on the held-back images: AP@0.5 %.4f with "
                        "the base's, %.4f with %s", spec_ap, best, instances)
        return best, instances

    def score(self, model: Path, held: HoldOut) -> float:
        return score_model(model, held.val, instances=self.instances,
                           device=self.options.device, cancel=self.cancel)

    def train(self, held: HoldOut, rule: str | None, check: FolderCheck, *, reserve_s: float
              ) -> Any:
        from medseg.training.loop import train

        kept = self.kept_skill(len(held.train))
        cases = [*held.train, *held.val, *kept]
        if self.scale_to is not None:
            from medseg.inference.engine import MAX_ZOOM
            from medseg.training.finetune_scale import scaled_pairs

            cases, self.zooms = scaled_pairs(cases, self.scale_to, self.run_dir / "scaled",
                                             max_zoom=MAX_ZOOM)
            logger.info("%d of %d training images zoomed to objects %.1f px across",
                        sum(z != 1.0 for z in self.zooms.values()), len(cases), self.scale_to)
        manifest = write_manifest(self.run_dir / "cases.json", cases)
        self.patch_fit = self.fit_patch(self.budget_s - self.elapsed() - reserve_s,
                                        n_train=len(held.train) + len(kept))
        left_s = self.budget_s - self.elapsed() - reserve_s
        if left_s < 30.0:
            logger.warning("the %.1f-minute budget leaves %.0f s for training after checking "
                           "the images and scoring the held-back ones (about %.0f s): too little "
                           "to learn anything; give more minutes", self.budget_s / 60.0,
                           max(left_s, 0.0), self.elapsed() + reserve_s)
        minutes = max(0.05, left_s / 60.0)
        config = self.config(manifest, [p.case_id for p in held.val], rule=rule, check=check,
                             minutes=minutes, n_train=len(held.train) + len(kept),
                             patch_size=self.patch_fit.patch_size
                             if self.patch_fit is not None and self.patch_fit.halved else None)
        self.reserve_s = reserve_s

        def on_step(done: int, total: int) -> None:
            self.step, self.total_steps = done, total
            self.report("training")

        def on_validation(record: dict[str, Any]) -> None:
            self.val_metric = float(record["val_mean"])

        self.report("training")
        result = train(config, progress=on_step, should_stop=self.cancel,
                       on_validation=on_validation)
        check_cancel(self.cancel)
        return result

    def config(self, manifest: Path, val_cases: list[str], *, rule: str | None,
               check: FolderCheck | None, minutes: float, n_train: int = 0,
               patch_size: list[int] | None = None) -> TrainConfig:
        """The training config (also made before anything runs, so that a bad ``--set``
        fails first)."""
        options = self.options
        channels = check.channels if check is not None else set()
        return finetune_config(self.base, base_path=self.start_path, name=self.name,
                               manifest=manifest, val_cases=val_cases,
                               run_dir=self.run_dir / "train", minutes=minutes,
                               channel_rule=rule, seed=options.seed,
                               num_threads=options.num_threads, device=options.device,
                               channels_needed=bool(channels - {self.base.image_channels}),
                               n_train=n_train, overrides=options.overrides,
                               patch_size=patch_size)

    def fit_patch(self, train_seconds: float, n_train: int) -> PatchFit | None:
        """The patch fitted to this machine's speed (:mod:`medseg.training.finetune_speed`):
        a training step of the base network is timed here, with the training's threads, and
        a 2D model's patch is halved when the budget holds too few steps of it (fewer than the
        schedule's cap for ``n_train`` images, too). ``None``: the card's patch, not probed (a
        ``patch_size`` override, a 3D model, a fixed field of view)."""
        if "patch_size" in self.options.overrides or not can_halve(self.base,
                                                                      self.base.roi_size):
            return None
        import torch

        if self.options.num_threads:
            torch.set_num_threads(self.options.num_threads)  # finetune() restores the caller's
        # the batch and precision the training will run: the base recipe's, or the overrides'
        recipe = {**((self.base.training or {}).get("config") or {}), **self.options.overrides}
        batch = int(recipe.get("batch_size") or 2)
        seconds = step_seconds(self.start_path, self.base.roi_size, batch,
                               device=self.options.device, amp=recipe.get("amp"))
        fit = fitted_patch(self.base, seconds, train_seconds,
                           cap_steps=max_epochs(n_train, batch) * ITERS_PER_EPOCH)
        logger.info("a training step of %s patches takes %.2f s here: about %d steps in the "
                    "budget; training on %s patches", "x".join(map(str, fit.card_patch)),
                    seconds, fit.expected_steps, "x".join(map(str, fit.patch_size)))
        return fit

    def kept_skill(self, n_train: int) -> list[Any]:
        """A seeded draw of ``max(10, n_train)`` pairs from ``keep_skill`` (none without)."""
        if self.options.keep_skill is None:
            return []
        from dataclasses import replace

        pairs = index_folder(self.options.keep_skill)
        order = np.random.default_rng(self.options.seed).permutation(len(pairs))
        return [replace(pairs[i], case_id=f"keep-{pairs[i].case_id}")
                for i in order[: max(10, n_train)]]

    def destination(self, improved: bool) -> Path:
        """The export path (or the user models folder) when better, else a candidate's path
        beside it (``<name>.candidate.safetensors``) that no model list shows."""
        options = self.options
        target = options.export or user_models_dir() / f"{self.name}{MODEL_SUFFIX}"
        if improved:
            return target
        folder = target.parent if options.export else user_models_dir() / "candidates"
        return folder / f"{self.name}.candidate{MODEL_SUFFIX}"

    def record(self, check: FolderCheck, held: HoldOut, rule: str | None, *, before: float,
               after: float, steps: int, improved: bool) -> dict[str, Any]:
        """``training["finetune"]`` of the new card."""
        return {
            "base": {"name": self.base.name, "path": str(self.base_path),
                     "sha256": file_sha256(self.base_path)},
            "data": str(self.options.data),
            "images": [{"name": p.case_id, "sha256": check.digests[p.case_id],
                        "objects" if self.instances else "labelled_voxels":
                            check.objects[p.case_id]} for p in check.pairs],
            "hold_out": held.describe(), "hold_out_method": held.method,
            "train_cases": [p.case_id for p in held.train],
            "val_cases": [p.case_id for p in held.val],
            "keep_skill": str(self.options.keep_skill) if self.options.keep_skill else None,
            "channel_rule": rule, "minutes": self.options.minutes,
            "object_scale": None if self.scale_to is None else {
                "diameter_px": round(self.scale_to, 2), "zoom": dict(self.zooms)},
            "elapsed_s": round(self.elapsed(), 1), "steps": steps,
            "metric": metric_name(self.instances), "before": round(before, 4),
            "after": round(after, 4), "improved": improved,
            "overrides": dict(self.options.overrides), "seed": self.options.seed,
            "date": time.strftime("%Y-%m-%d"),
            "phase_start_s": dict(self.phase_start),
            "patch": None if self.patch_fit is None else self.patch_fit.to_dict(),
        }


def _without_diameter(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Instance settings without ``object_diameter`` (a sizing, not a setting re-chosen)."""
    return None if spec is None else {k: v for k, v in spec.items() if k != "object_diameter"}


def default_name(base: str) -> str:
    """``<base>-ft-<date>``, with ``-2``, ``-3``... when taken."""
    stem = f"{base}-ft-{time.strftime('%Y-%m-%d')}"
    taken = set(list_models())
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def widened(model: Any, card: ModelCard, channels: int) -> tuple[Any, ModelCard]:
    """A one-channel 2D/3D network (and its card, without a channel rule) widened to
    ``channels`` (3) input channels: the input layer's weights spread over the colours
    (:func:`medseg.transforms.channels.widen_input_weights`), every other weight kept."""
    from dataclasses import replace

    import torch

    from medseg.networks.factory import build_network
    from medseg.transforms.channels import widen_input_weights

    if card.image_channels != 1 or card.context_slices or channels != 3:
        raise ModelError(f"model {card.name!r}: only a one-channel network (no context slices) "
                         f"can be widened to three colour channels")
    network = replace(card.network, in_channels=channels)
    wide = build_network(network)
    old = model.state_dict()
    state = {}
    for name, value in wide.state_dict().items():
        source = old[name]
        if source.shape != value.shape:
            source = torch.from_numpy(widen_input_weights(source.detach().cpu().numpy()))
        state[name] = source
    wide.load_state_dict(state)
    # the one-channel rule (a fine-tuned base may carry one) no longer fits: the caller sets
    # the three-channel one
    card = replace(card, network=network, channel_rule=None)
    return wide, card


def polarity_rule(check: FolderCheck, card: ModelCard) -> str:
    """``"luminance"``, or ``"luminance-auto"`` when the luminance's negative brings the median
    normalised intensity of (up to :data:`RULE_SAMPLE`) images nearer the middle of the base
    model's training range; ``"luminance"`` when the card records no range.

    ``luminance-auto`` inverts each image with a bright background, so the new images are
    inverted and the base's own kind is not: on H&E, nuclei fine-tuned with it scored as with
    the fixed negative (AP@0.5 0.566 vs 0.578 on other H&E images) and kept its fluorescence
    skill (0.690, base 0.771; with the fixed negative 0.000), benchmarks/results/finetune_he.txt.
    """
    from medseg.inference.fit import QUANTILES, normalized_quantiles
    from medseg.training.finetune_data import read_pair
    from medseg.transforms.channels import apply_channel_rule

    intensity = (card.domain or {}).get("intensity")
    if not intensity:
        return "luminance"
    k = list(QUANTILES).index(50.0)
    target = (intensity["min"][k] + intensity["max"][k]) / 2
    distance = {"luminance": 0.0, "luminance-inverted": 0.0}
    for pair in check.pairs[:RULE_SAMPLE]:
        image, _ = read_pair(pair)
        for rule in distance:
            q = normalized_quantiles(apply_channel_rule(image.array, rule), card.normalization)
            distance[rule] += abs(q[k] - target)
    nearer = min(distance, key=lambda r: (distance[r], r != "luminance-inverted"))
    return "luminance-auto" if nearer == "luminance-inverted" else "luminance"
