"""Project-wide rules: ruff is clean, and the library's layers point one way."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LIB = REPO_ROOT / "medseg"
FORBIDDEN_EVERYWHERE = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt",
                        "magicgui", "napari_plugin", "workflows")
# lower layers must not know the layers above them
LOWER = {
    "io": ("medseg.training", "medseg.inference", "medseg.cli", "medseg.demo",
           "medseg.distributed"),
    "transforms": ("medseg.training", "medseg.inference", "medseg.cli", "medseg.demo"),
    "networks": ("medseg.training", "medseg.inference", "medseg.cli", "medseg.demo"),
    "metrics": ("medseg.training", "medseg.inference", "medseg.cli", "medseg.demo"),
    "inference": ("medseg.training", "medseg.cli", "medseg.demo"),
    "training": ("medseg.cli", "medseg.demo"),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_never_imports_gui_or_clients():
    offenders = [
        f"{p.relative_to(REPO_ROOT)} imports {name}"
        for p in LIB.rglob("*.py")
        for name in _imports(p)
        if name.split(".")[0] in FORBIDDEN_EVERYWHERE
    ]
    assert offenders == []


def test_layers_point_one_way():
    offenders = []
    for layer, banned in LOWER.items():
        for p in (LIB / layer).rglob("*.py"):
            offenders += [f"{p.relative_to(REPO_ROOT)} imports {n}" for n in _imports(p)
                          if n.startswith(banned)]
    assert offenders == []


def test_no_print_in_library_core():
    offenders = []
    for p in LIB.rglob("*.py"):
        if "cli" in p.relative_to(LIB).parts:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{p.relative_to(REPO_ROOT)}:{node.lineno}")
    assert offenders == []


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    out = subprocess.run([ruff, "check", "--output-format", "concise", str(REPO_ROOT)],
                         capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_simpleitk_and_highdicom_load_only_when_used():
    """The engine, readers and CLIs import without SimpleITK (~130 MB resident) or highdicom
    (~18 MB): a NIfTI-only batch run never pays for them
    (``benchmarks/results/inference_large.txt``)."""
    code = ("import sys, medseg.inference, medseg.io, medseg.transforms, medseg.cli.predict; "
            "print('SimpleITK' in sys.modules, 'highdicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == "False False"
