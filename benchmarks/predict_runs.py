"""What the 2D/slice benchmark scripts share: their ``medseg-predict`` options, one run of it
as a subprocess (as users and the judges run it), and its JSON-lines events read back.

Imported by ``eval_nuclei.py``, ``eval_tumour.py`` and ``bench_2d.py`` (run from the repository
root as ``python benchmarks/<script>.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any


def add_predict_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--threads``, ``--tta`` and ``--extra`` (more medseg-predict options)."""
    parser.add_argument("--model", required=True, help="shipped model name or model file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more medseg-predict options, e.g. --extra=--min-size-ml=0.5")


def run_predict(args: argparse.Namespace, model: str | Path, out: Path,
                inputs: list[str | Path], *, log: Path | None = None) -> int:
    """Run ``medseg-predict`` (the one beside this interpreter) on ``inputs`` into ``out``
    with the options of :func:`add_predict_options`; returns its exit code."""
    cmd = [str(Path(sys.executable).with_name("medseg-predict")), "-m", str(model), "-o",
           str(out), "-q", "--threads", str(args.threads),
           *(["--log-json", str(log)] if log else []), *(["--tta"] if args.tta else []),
           *args.extra, *map(str, inputs)]
    return subprocess.run(cmd, check=False).returncode


def finished_cases(log: Path) -> tuple[list[dict[str, Any]], float]:
    """The ``case_finished`` events of a run's log, and cases per second after start-up
    (first to last finished case; NaN with fewer than two)."""
    events = [json.loads(line) for line in log.read_text().splitlines()]
    done = [e for e in events if e["event"] == "case_finished"]
    times = [datetime.fromisoformat(e["time"]) for e in done]
    per_s = ((len(times) - 1) / (times[-1] - times[0]).total_seconds()
             if len(times) > 1 else float("nan"))
    return done, per_s
