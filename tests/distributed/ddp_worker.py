"""Run :func:`medseg.training.train` as one ``torchrun`` process and record what this rank did.

Usage (by ``test_ddp_torchrun.py``)::

    torchrun --standalone --nproc_per_node 2 ddp_worker.py CONFIG REPORT_DIR --stop N

trains N iterations and stops (checkpointing, as an interruption would), then resumes from the
checkpoint files to the end, as a new ``train(resume=True)`` call in the same processes. Writes
``REPORT_DIR/{stop,resume}_rank<r>.pt`` with this rank's weights, the checkpoint tags it saved
and the iterations it ran, so the test can compare ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("--stop", type=int, required=True)
    args = parser.parse_args()

    import medseg.training.loop as loop
    from medseg.distributed import ddp
    from medseg.training import load_config

    saved: list[str] = []
    real_save = loop.save_checkpoint

    def recording_save(run_dir, tag, model, card, state):  # type: ignore[no-untyped-def]
        saved.append(tag)
        return real_save(run_dir, tag, model, card, state)

    loop.save_checkpoint = recording_save
    captured: list[torch.nn.Module] = []

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        captured.append(model)
        return ddp.wrap(model)

    args.report_dir.mkdir(parents=True, exist_ok=True)
    for phase, resume, stop in (("stop", False, args.stop), ("resume", True, None)):
        saved.clear()
        captured.clear()
        result = loop.train(load_config(args.config), resume=resume, stop_after_iterations=stop,
                            wrap_model=wrap)
        weights = {k: v.detach().clone() for k, v in captured[0].state_dict().items()}
        torch.save({"weights": weights, "saved": list(saved), "iterations": result.iterations,
                    "world_size": ddp.world_size(), "distributed": ddp.is_distributed()},
                   args.report_dir / f"{phase}_rank{ddp.rank()}.pt")
    ddp.shutdown(together=True)  # as medseg-train leaves the group: before interpreter exit


if __name__ == "__main__":
    main()
