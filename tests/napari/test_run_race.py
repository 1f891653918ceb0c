"""The Segment widget while torch and the engine are still being imported, in fresh
interpreters (this one has torch already): Run waits for the engine and never raises; closing
the viewer during the import or mid-run ends the process cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

PROBE = Path(__file__).with_name("run_race_probe.py")


def _probe(*args: str) -> tuple[dict, str]:
    out = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "has been deleted" not in out.stderr, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_run_clicked_while_torch_is_half_imported_waits_and_runs() -> None:
    """Defect: "AttributeError: partially initialized module 'torch' has no attribute
    'cuda'" from a Run clicked while the widget's background thread imported torch."""
    report, _ = _probe("run-at-once", "demo-liver-lesion")
    assert report["torch_half_imported"], report  # the click did land mid-import
    assert report["button_text"] == "Run (loading...)" and not report["button_enabled"]
    assert report["status_after_click"] == ("loading the engine, then segmenting "
                                            "'scan'...")
    assert report["final_status"] == "done: scan [medseg demo-liver-lesion]", report
    assert report["final_button"] == "Run" and report["final_enabled"]


def test_closing_the_viewer_during_the_import_exits_cleanly() -> None:
    report, _ = _probe("close-during-import")
    assert report["closed_while_importing"]


def test_closing_the_viewer_mid_run_in_a_fresh_process_exits_0_quietly() -> None:
    """The close-mid-run check as a user meets it: a fresh napari, the demo model, Run at
    once, the window closed while the windows run, the interpreter ending."""
    report, _ = _probe("close-mid-run", "demo-liver-lesion")
    assert report["started"]
    done, total = report["windows_at_close"]
    assert 0 < done < total
