"""Fine-tune a model on a folder of corrected images, in minutes, and never ship a worse one.

A fine-tune is not a second training loop: :func:`finetune` builds a
:class:`~medseg.training.config.TrainConfig` from the base model's card (network,
normalisation, window, instance method, augmentation, channels) and the folder
(:mod:`medseg.training.finetune_recipe`), hands it to :func:`medseg.training.train`, which
starts from the base weights (``init_from``) under a fine-tuning schedule and a time budget,
then scores the base and the fine-tuned model on held-back images through the inference
engine (:mod:`medseg.training.finetune_score`). When the fine-tune gives the model a channel
rule it did not have (colour or inverted images), the base's weights with that rule and no
training are scored too (at one object scale, sizing each image as the fine-tuned weights do),
and the better weights are kept. Only a model better than the base is written where asked; one
that is not better is kept as a named candidate, and the result says so. The new card names its
base, its images and both figures (:mod:`medseg.training.finetune_card`).

Examples:
    >>> from pathlib import Path
    >>> FinetuneOptions(base="nuclei", data=Path("corrections"), minutes=5).minutes
    5.0
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import CancelledError, ConfigError
from medseg.models import MODEL_SUFFIX, resolve_model, user_models_dir

logger = logging.getLogger(__name__)

__all__ = ["FinetuneOptions", "FinetuneProgress", "FinetuneResult", "finetune",
           "user_models_dir"]

#: Time kept for scoring the fine-tuned model, as a multiple of the time the base took.
SCORING_RESERVE = 1.3


@dataclass
class FinetuneOptions:
    """What to fine-tune, on what, for how long, and where the result goes.

    Attributes:
        base: A model's name (shipped or the user's own) or a ``.safetensors`` model file, a
            fine-tuned one included.
        data: A folder with ``images/`` and ``masks/`` holding files of matching stems (see
            :mod:`medseg.training.finetune_data`).
        minutes: The whole fine-tune's time budget (checking, training, scoring), in minutes.
        export: Where the model goes when it is better than the base; ``None``:
            ``<user models folder>/<name>.safetensors``.
        name: The new model's name; ``None``: the export file's stem, else
            ``<base>-ft-<date>``.
        overrides: Training options to change, as ``--set KEY=VALUE`` gives them (dotted keys of
            :class:`~medseg.training.config.TrainConfig`: ``lr``, ``data.channel_rule``...).
        seed: Seed of the hold-out, sampling and augmentation.
        num_threads: CPU threads for torch (``None``: torch's default).
        keep_skill: A folder (same layout) of images like the base model's training images:
            as many of them as the new training images (at least 10) are mixed into the
            training, so the model keeps its old skill.
        run_dir: Where the run's checkpoints and logs go; ``None``:
            ``<user models folder>/runs/<name>``.
        device: ``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when present.
        object_scale: For an instance model of 2D images that records its objects' diameter
            in pixels (``nuclei``): zoom every training image so that its objects have that
            diameter, and let the fine-tuned model estimate each image's diameter
            (``object_diameter="auto"``; :mod:`medseg.training.finetune_scale`). ``False``:
            train on the images as they are.
    """

    base: str
    data: Path
    minutes: float = 10.0
    export: Path | None = None
    name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    num_threads: int | None = None
    keep_skill: Path | None = None
    run_dir: Path | None = None
    device: str | None = None
    object_scale: bool = True

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.minutes = float(self.minutes)
        if not self.minutes > 0:
            raise ConfigError(f"minutes must be > 0, got {self.minutes}")
        if self.export is not None:
            self.export = Path(self.export)
            if not self.export.name.endswith(MODEL_SUFFIX):
                raise ConfigError(f"--export must name a {MODEL_SUFFIX} file, got {self.export}")


@dataclass
class FinetuneProgress:
    """Where a fine-tune is (sent to the ``progress`` callback).

    Attributes:
        step: Training steps done.
        elapsed_s: Seconds since the fine-tune began.
        budget_s: The whole budget, in seconds.
        eta_s: Seconds left (the budget's remainder; the scoring after training included).
        val_metric: The latest validation figure: during training the network's mean Dice on
            the held-back images; after scoring, the fine-tuned model's final figure.
        phase: ``"checking"``, ``"scoring base"``, ``"training"``, ``"scoring"``,
            ``"saving"`` or ``"done"``.
    """

    step: int
    elapsed_s: float
    budget_s: float
    eta_s: float
    val_metric: float | None
    phase: str


@dataclass
class FinetuneResult:
    """What a fine-tune made.

    Attributes:
        model_path: The model file written: the export path when the model is better, else
            the candidate's file.
        card_path: Its card as JSON, beside it.
        metric: What ``before`` and ``after`` measure (``"AP@0.5 (pooled)"`` or
            ``"Dice (mean over classes)"``), on the held-back images.
        before: The base model's figure.
        after: The fine-tuned model's figure.
        improved: ``after > before``.
        candidate: The model was not better and was kept as a named candidate only (nothing
            was written at the export path).
        steps: Training steps.
        minutes: Wall-clock minutes the whole fine-tune took.
        train_cases: The images (or image parts) trained on.
        val_cases: The images (or image parts) scored on.
        with_rule: The base model's weights with the new channel rule and no training (the
            rule alone), when the fine-tune chose a rule the base did not have.
        kept_base_weights: Training did not beat ``with_rule``: the model written is the
            base's weights with the channel rule (``after`` equals ``with_rule``).
        patch: The patch fitted to the machine's speed, when the card's was halved
            (:class:`medseg.training.finetune_speed.PatchFit` as a dict); ``None``: the card's.
    """

    model_path: Path
    card_path: Path
    metric: str
    before: float
    after: float
    improved: bool
    candidate: bool
    steps: int
    minutes: float
    train_cases: list[str]
    val_cases: list[str]
    with_rule: float | None = None
    kept_base_weights: bool = False
    patch: dict[str, Any] | None = None

    def summary(self) -> str:
        """One line a user reads: the figures and where the model went."""
        verdict = (f"better: saved as {self.model_path}" if self.improved else
                   f"not better: nothing exported; kept as candidate {self.model_path}")
        rule = ("" if self.with_rule is None else
                f", base weights with the channel rule alone {self.with_rule:.3f}")
        kept = (" (training did not beat the channel rule alone: the base's weights are kept)"
                if self.kept_base_weights else "")
        if self.patch:
            kept += (f"; trained on {'x'.join(map(str, self.patch['patch_size']))} patches: "
                     f"this machine had time for about {self.patch['expected_steps']} steps of "
                     f"{'x'.join(map(str, self.patch['card_patch']))}")
        return (f"{self.metric} on {len(self.val_cases)} held-back image(s): base "
                f"{self.before:.3f}{rule}, fine-tuned {self.after:.3f}{kept} ({self.steps} "
                f"steps, {self.minutes:.1f} min); {verdict}")


def finetune(options: FinetuneOptions, *,
             progress: Callable[[FinetuneProgress], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> FinetuneResult:
    """Fine-tune ``options.base`` on ``options.data`` for ``options.minutes``.

    Every pair is checked before training (a misfit raises ``DatasetError`` naming the file);
    part of the data is held back; the base is scored on it; the training loop runs from the
    base weights; the fine-tuned model is scored on the same held-back data; the model is
    written to ``options.export`` (or the user models folder) only when it is better, else
    kept as a candidate.

    Args:
        options: What, on what, how long, where.
        progress: Called with a :class:`FinetuneProgress` at every step and phase change.
        cancel: Asked often; ``True`` stops the fine-tune (``CancelledError``; nothing is
            exported; the run folder keeps the checkpoints so far).

    Raises:
        DatasetError: The folder does not fit the model (the message names the file).
        ModelError: The base model cannot be found or read.
        CancelledError: ``cancel`` returned ``True``.
    """
    import torch

    from medseg.training.finetune_run import FinetuneRun

    # torch's thread count is the caller's again afterwards (training sets its own): the next
    # prediction in this process must not inherit it (its sums, and near-tied labels, would
    # differ from a run elsewhere)
    threads = torch.get_num_threads()
    try:
        run = FinetuneRun(options, progress=progress, cancel=cancel, started=time.monotonic())
        return run.execute()
    finally:
        torch.set_num_threads(threads)


def check_cancel(cancel: Callable[[], bool] | None) -> None:
    """Raise ``CancelledError`` when ``cancel`` says so."""
    if cancel is not None and cancel():
        raise CancelledError("fine-tune cancelled")


def base_model_path(base: str) -> Path:
    """The base model's file (a name or a path)."""
    return resolve_model(base)
