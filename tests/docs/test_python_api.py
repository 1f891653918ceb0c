"""Every Python block of docs/python-api.md runs, in order, as a reader would paste them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from doc_checks import REPO_ROOT


def test_python_api_page_runs(tmp_path: Path) -> None:
    page = REPO_ROOT / "docs" / "python-api.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 5
    (tmp_path / "workflows").symlink_to(REPO_ROOT / "workflows")  # the page runs from the root
    namespace: dict[str, object] = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - the doc's own code
    finally:
        os.chdir(cwd)
    assert (tmp_path / "api-example-output" / "labels.nii.gz").is_file()
    summary = namespace["summary"]
    assert summary.completed == 1 and not summary.failed  # type: ignore[attr-defined]
    assert namespace["scores"].ap50 > 0.8  # type: ignore[attr-defined]  # the demo's 0.948
