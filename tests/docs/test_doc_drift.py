"""The docs agree with the code: every CLI option, config option, record field, link and
shipped model; and each check is shown to fail on a copy of the docs with a planted error."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from doc_checks import (
    REPO_ROOT,
    bookkeeping_words,
    broken_links,
    config_problems,
    fit_help_problems,
    help_without_example,
    models_without_row,
    stale_generated,
    undocumented_csv_columns,
    undocumented_options,
    undocumented_record_fields,
    unknown_options,
    unlisted_workflows,
)


def test_every_cli_option_is_documented() -> None:
    assert undocumented_options(REPO_ROOT) == []


def test_docs_name_only_options_that_exist() -> None:
    assert unknown_options(REPO_ROOT) == []


def test_every_command_help_has_an_example() -> None:
    assert help_without_example() == []


def test_every_config_option_is_in_config_md() -> None:
    assert config_problems(REPO_ROOT) == []


def test_every_record_field_is_in_outputs_md(batch_record_keys: set[str]) -> None:
    assert undocumented_record_fields(REPO_ROOT, batch_record_keys) == []
    assert undocumented_csv_columns(REPO_ROOT) == []


def test_links_and_images_point_at_something() -> None:
    assert broken_links(REPO_ROOT) == []


def test_fit_messages_link_to_existing_troubleshooting_entries() -> None:
    assert fit_help_problems(REPO_ROOT) == []


def test_every_fit_warning_carries_its_link() -> None:
    from medseg.inference.fit import HELP_ANCHORS, FitCheck

    source = (REPO_ROOT / "medseg" / "inference" / "fit.py").read_text(encoding="utf-8")
    names = set(re.findall(r'FitCheck\(\s*"(\w+)"', source))
    names |= set(re.findall(r'_check_range\(\s*"(\w+)"', source))
    assert names and names <= set(HELP_ANCHORS), names - set(HELP_ANCHORS)
    warning = FitCheck("modality", "warn", "this model was trained on MR images")
    assert warning.message.endswith("(see docs/troubleshooting.md#fit-modality)")
    assert FitCheck("modality", "ok", "MR, as trained").message == "MR, as trained"


def test_every_shipped_model_has_its_row() -> None:
    assert models_without_row(REPO_ROOT) == []


def test_workflows_readme_lists_every_workflow() -> None:
    assert unlisted_workflows(REPO_ROOT) == []


def test_no_bookkeeping_words_in_the_tree() -> None:
    assert bookkeeping_words(REPO_ROOT) == []


def test_generated_files_equal_what_gen_docs_writes() -> None:
    assert stale_generated(REPO_ROOT) == []


def test_readme_is_short() -> None:
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 120
    prose = [ln for ln in re.sub(r"```.*?```", "", "\n".join(lines), flags=re.DOTALL)
             .splitlines() if not ln.startswith("|")]
    assert max(map(len, prose)) <= 200


# -- each check fails on a planted error ------------------------------------------------------
def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def _drop_option(root: Path) -> None:
    for page in (root / "docs").glob("*.md"):
        if page.name != "cli.md":
            page.write_text(page.read_text(encoding="utf-8").replace("--log-json", "--log"),
                            encoding="utf-8")


def _invent_option(root: Path) -> None:
    with open(root / "docs" / "predict.md", "a", encoding="utf-8") as f:
        f.write("\n```bash\nmedseg-predict -m nuclei --colour red -o out/ in/\n```\n")


def _drop_config_row(root: Path) -> None:
    text = (root / "docs" / "config.md").read_text(encoding="utf-8")
    (root / "docs" / "config.md").write_text(
        "\n".join(ln for ln in text.splitlines() if not ln.startswith("| `data.val_fraction`")),
        encoding="utf-8")


def _wrong_default(root: Path) -> None:
    _edit(root / "docs" / "config.md", "| `lr` | `0.01` |", "| `lr` | `0.1` |")


def _drop_record_field(root: Path) -> None:
    _edit(root / "docs" / "outputs.md", "`num_lesions`", "num_lesions")


def _broken_link(root: Path) -> None:
    with open(root / "docs" / "install.md", "a", encoding="utf-8") as f:
        f.write("\nSee [the guide](guide.md) and ![a figure](images/none.png).\n")


def _broken_anchor(root: Path) -> None:
    with open(root / "README.md", "a", encoding="utf-8") as f:
        f.write("\n[fit](docs/troubleshooting.md#no-such-entry)\n")


def _fit_anchor_gone(root: Path) -> None:
    _edit(root / "docs" / "troubleshooting.md", "### Fit: intensity", "### Intensities")


def _model_row_gone(root: Path) -> None:
    text = (root / "README.md").read_text(encoding="utf-8")
    (root / "README.md").write_text("\n".join(ln for ln in text.splitlines()
                                              if not ln.startswith("| [`nuclei`]")),
                                    encoding="utf-8")


def _workflow_unlisted(root: Path) -> None:
    (root / "workflows" / "extra.yaml").write_text("name: x\n", encoding="utf-8")


def _bookkeeping(root: Path) -> None:
    (root / "docs" / "notes.md").write_text("Added in " + "sess" + "ion 12.\n", encoding="utf-8")


def _stale_reference(root: Path) -> None:
    text = (root / "docs" / "cli.md").read_text(encoding="utf-8")
    (root / "docs" / "cli.md").write_text(
        "\n".join(ln for ln in text.splitlines() if "`--overlap`" not in ln), encoding="utf-8")


Check = Callable[[Path], list[str]]
#: ``{error: (the check that must catch it, how to plant it in a copy of the docs)}``.
PLANTED: dict[str, tuple[Check, Callable[[Path], None]]] = {
    "undocumented option": (undocumented_options, _drop_option),
    "option that does not exist": (unknown_options, _invent_option),
    "config option without a row": (config_problems, _drop_config_row),
    "config default that differs": (config_problems, _wrong_default),
    "broken link and image": (broken_links, _broken_link),
    "broken anchor": (broken_links, _broken_anchor),
    "fit message linking nowhere": (fit_help_problems, _fit_anchor_gone),
    "model without its row": (models_without_row, _model_row_gone),
    "workflow not listed": (unlisted_workflows, _workflow_unlisted),
    "bookkeeping words": (bookkeeping_words, _bookkeeping),
    "generated reference edited by hand": (stale_generated, _stale_reference),
}


@pytest.mark.parametrize("error", sorted(PLANTED))
def test_each_check_fails_on_a_planted_error(error: str, docs_copy: Path) -> None:
    check, plant = PLANTED[error]
    assert check(docs_copy) == [], "the copy must pass before the error is planted"
    plant(docs_copy)
    assert check(docs_copy), f"planting a {error} went unnoticed"


def test_record_check_fails_on_a_planted_error(docs_copy: Path,
                                               batch_record_keys: set[str]) -> None:
    assert undocumented_record_fields(docs_copy, batch_record_keys) == []
    _drop_record_field(docs_copy)
    assert undocumented_record_fields(docs_copy, batch_record_keys) == [
        "record field num_lesions is not in docs/outputs.md"]


def test_evaluate_help_names_its_commands() -> None:
    from typer.testing import CliRunner

    from medseg.cli.evaluate import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    intro = result.output.split("Options")[0]  # the help text, before the tables
    assert all(f"'{name}'" in intro for name in ("folders", "instances", "model")), intro


def test_help_check_fails_on_a_command_without_example(monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.cli import main

    assert help_without_example() == []
    monkeypatch.setattr(main.info_command, "__doc__", "Print the versions.")
    assert help_without_example() == ["medseg info: --help has no 'Example: medseg info ...' line"]
