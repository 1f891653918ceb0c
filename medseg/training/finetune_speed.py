"""The fine-tune's patch, fitted to this machine's speed: enough steps in the time budget.

A fine-tune trains for minutes, so the number of steps it gets is set by the machine. On a CPU
with bf16 instructions (AVX-512 bf16, AMX) the ``nuclei`` recipe's 256 x 256 patches run about
1,500 steps in a 10-minute H&E fine-tune; on a CPU with AVX2 only, in float32, about 500, and
the fine-tuned model is worse for it (pooled AP@0.5 over three folds of H&E images,
``benchmarks/results/finetune_he.txt``). Patches of half the side take a third of the time:
there, 128 x 128 patches ran about 1,650 steps and scored better than the 500 larger ones.

So before training, :func:`step_seconds` times the base network's training step on this
machine, as loaded as it is, and :func:`fitted_patch` halves a 2D model's patch when the
budget would hold fewer than :data:`FEW_STEPS` steps of it, and fewer than the schedule's own
step cap (a few images end at the cap, not at the budget: those keep the patch). The cap is
counted in pixels (:func:`medseg.training.finetune_recipe.max_epochs`), so the smaller patches
see as much of each image as the larger ones would have. Models that see a fixed field of view
(a card's ``fov_pixels``: whole brain slices) and 3D models keep their patch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.model_card import ModelCard

logger = logging.getLogger(__name__)

#: Fewer expected steps than this at the card's patch: the patch is halved. At about 500 steps
#: the 256 x 256 H&E fine-tune lost to 128 x 128 patches at about 1,650; at about 1,500 steps,
#: the 256 x 256 patches scored as well or better.
FEW_STEPS = 1000
#: No patch side is halved below this.
SMALLEST_PATCH = 128
#: Timed steps of the probe (after one warm-up step).
PROBE_STEPS = 2


@dataclass(frozen=True)
class PatchFit:
    """What the speed probe found and chose (recorded in the fine-tuned model's card).

    Attributes:
        patch_size: The patch the fine-tune trains on.
        card_patch: The base recipe's patch (the card's window).
        seconds_per_step: A training step at ``card_patch`` on this machine, as loaded as it
            was before training.
        expected_steps: Steps of ``card_patch`` the training budget would hold.
    """

    patch_size: list[int]
    card_patch: list[int]
    seconds_per_step: float
    expected_steps: int

    @property
    def halved(self) -> bool:
        return self.patch_size != self.card_patch

    def to_dict(self) -> dict[str, object]:
        return {"patch_size": list(self.patch_size), "card_patch": list(self.card_patch),
                "seconds_per_step": round(self.seconds_per_step, 4),
                "expected_steps": self.expected_steps, "few_steps": FEW_STEPS}


def can_halve(card: ModelCard, patch: Sequence[int]) -> bool:
    """A 2D model without a fixed field of view, whose patch sides are all at least twice
    :data:`SMALLEST_PATCH` (and halve to a multiple of the network's divisor)."""
    return (card.spatial_dims == 2 and not card.fov_pixels and len(patch) == 2
            and all(p >= 2 * SMALLEST_PATCH and (p // 2) % d == 0
                    for p, d in zip(patch, card.network.divisor, strict=True)))


def fitted_patch(card: ModelCard, seconds_per_step: float, train_seconds: float,
                 patch: Sequence[int] | None = None, cap_steps: int | None = None) -> PatchFit:
    """The patch to fine-tune ``card``'s model with, when a step of ``patch`` (default: the
    card's window) takes ``seconds_per_step``, training has ``train_seconds`` and the schedule
    ends after at most ``cap_steps`` steps of ``patch``.

    Examples:
        >>> from medseg.model_card import ModelCard
        >>> from medseg.networks.factory import NetworkConfig
        >>> net = NetworkConfig(spatial_dims=2, in_channels=1, out_channels=3,
        ...                     filters=[8, 16, 32, 64, 64], strides=[[1, 1]] + [[2, 2]] * 4)
        >>> card = ModelCard(name="n", network=net, label_names={0: "background"},
        ...                  roi_size=[256, 256])
        >>> fitted_patch(card, 1.0, 540.0).patch_size       # 540 steps: halved
        [128, 128]
        >>> fitted_patch(card, 0.25, 540.0).patch_size      # 2,160 steps: kept
        [256, 256]
        >>> fitted_patch(card, 1.0, 540.0, cap_steps=300).patch_size  # ends at its cap: kept
        [256, 256]
    """
    card_patch = [int(p) for p in (patch or card.roi_size)]
    expected = int(train_seconds / max(seconds_per_step, 1e-6))
    chosen = card_patch
    enough = FEW_STEPS if cap_steps is None else min(FEW_STEPS, cap_steps)
    if expected < enough and can_halve(card, card_patch):
        chosen = [p // 2 for p in card_patch]
    return PatchFit(patch_size=chosen, card_patch=card_patch,
                    seconds_per_step=seconds_per_step, expected_steps=expected)


def step_seconds(model_path: Path, patch: Sequence[int], batch_size: int, *,
                 device: str | None, amp: str | bool | None) -> float:
    """Seconds of one training step (forward, loss, backward) of ``model_path``'s network on a
    random batch of ``batch_size`` patches, on this machine with the training's device,
    precision and torch threads (the upper median of :data:`PROBE_STEPS` timed steps, after a
    warm-up step: with two, the slower)."""
    import torch
    import torch.nn.functional as F

    from medseg.model_card import load_model
    from medseg.training.runtime import pick_runtime

    runtime = pick_runtime(device=device, amp="auto" if amp is None else amp)
    model, card = load_model(model_path, device=runtime.device)
    model.train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, card.network.in_channels, *patch, generator=generator)
    y = torch.randint(0, card.network.out_channels, (batch_size, *patch), generator=generator)
    x, y = x.to(runtime.device), y.to(runtime.device)
    autocast = (torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)
                if runtime.amp_dtype else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            out = model(x)
            if out.dim() == x.dim() + 1:  # deep supervision: (batch, heads, classes, ...)
                out = out[:, 0]
            loss = F.cross_entropy(out.float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)

    step()
    times = []
    for _ in range(PROBE_STEPS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
