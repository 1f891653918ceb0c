"""The checks that keep the docs true to the code. Each takes the root of a tree (the
repository, or a temporary copy with a planted error) and returns its problems as lines; an
empty list means the docs agree with the code.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_gen_docs() -> Any:
    """``scripts/gen_docs.py`` as a module (scripts/ is not a package)."""
    if "gen_docs" in sys.modules:
        return sys.modules["gen_docs"]
    spec = importlib.util.spec_from_file_location("gen_docs", REPO_ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module
    spec.loader.exec_module(module)
    return module


# -- which files are docs ----------------------------------------------------------------------
def doc_files(root: Path) -> list[Path]:
    """Every Markdown file a reader is sent to: README.md, docs/, workflows/ and the plugin's."""
    files = [root / "README.md", *sorted((root / "docs").rglob("*.md")),
             root / "workflows" / "README.md", root / "napari_plugin" / "README.md"]
    return [f for f in files if f.is_file()]


def hand_written_docs(root: Path) -> list[Path]:
    """docs/ pages written by people (the generated command reference does not count as a
    mention: it lists every option whatever the pages say)."""
    return [f for f in sorted((root / "docs").rglob("*.md")) if f.name != "cli.md"]


def _text(files: Iterable[Path]) -> str:
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


# -- command-line options ------------------------------------------------------------------------
def _mentions(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def undocumented_options(root: Path) -> list[str]:
    """Options of the Typer commands (long names, ``--x/--no-x`` both) that no hand-written
    page of docs/ mentions."""
    text = _text(hand_written_docs(root))
    problems = []
    for cmd in load_gen_docs().commands():
        for option in cmd.options():
            for name in [*option.opts, *option.secondary_opts]:
                if name.startswith("--") and not _mentions(name, text):
                    problems.append(f"{cmd.title} {name}: not mentioned in docs/")
    return problems


#: Options of other tools the docs show, by the tool that owns them.
OTHER_TOOLS = {
    "torchrun": {"--standalone", "--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_backend",
                 "--rdzv_endpoint", "--rdzv_id"},
    "ray": {"--head", "--address", "--port", "--num-cpus", "--num-gpus"},
    "pip": {"--index-url", "--upgrade", "--extra-index-url"},
    "tensorboard": {"--logdir"},
    "npe2": {"--imports"},
    "pytest": {"--strict-markers"},
}
#: Pages for developers: their code spans also quote benchmark scripts (not checked for bare
#: ``--x``; their medseg command lines still are).
DEVELOPER_PAGES = {"RESULTS.md", "decoder.md", "ARCHITECTURE.md"}
_PROGRAM = re.compile(r"(?<![\w/.-])(medseg(?:-train|-predict|-evaluate)?)(?![\w-])")
_CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _command_lines(text: str) -> Iterator[str]:
    """Lines of code blocks and inline code spans that call a medseg console script, with
    continuation lines joined."""
    for block in _CODE_BLOCK.findall(text):
        yield from block.replace("\\\n", " ").splitlines()
    yield from _CODE_SPAN.findall(_CODE_BLOCK.sub("", text))


def unknown_options(root: Path) -> list[str]:
    """Options the docs give a medseg command that it does not have, and ``--x`` written in
    code anywhere in the docs that no medseg command (nor a named other tool) has."""
    gen = load_gen_docs()
    by_title = {cmd.title: cmd for cmd in gen.commands()}
    every = set().union(*(cmd.option_names() for cmd in by_title.values()))
    others = set().union(*OTHER_TOOLS.values())
    problems = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(root)
        for line in _command_lines(text):
            match = _PROGRAM.search(line)
            if match:
                problems += _check_command(line[match.start():], by_title, where)
        if path.name in DEVELOPER_PAGES:
            continue  # they quote the benchmark scripts' own options
        code = "\n".join([*_CODE_BLOCK.findall(text), *_CODE_SPAN.findall(text)])
        for name in sorted(set(re.findall(r"(?<![\w-])--[a-z][\w-]*", code))):
            if name not in every and name not in others:
                problems.append(f"{where}: {name} is no option of any medseg command")
    return problems


def _check_command(line: str, by_title: dict[str, Any], where: Path) -> list[str]:
    try:
        tokens = shlex.split(line.split(" #")[0], posix=True)
    except ValueError:
        tokens = line.split()
    if not tokens:
        return []
    program, rest = tokens[0], tokens[1:]
    cmd = by_title.get(f"{program} {rest[0]}") if rest else None
    if cmd is not None:
        rest = rest[1:]
    else:
        cmd = by_title.get(program)
    if cmd is None:
        return []  # `medseg` alone, or a group shown without its sub-command
    problems = []
    for token in rest:
        if token in ("|", ";", "&&", ">", "2>&1") or token.startswith("#"):
            break
        name = token.split("=", 1)[0]
        if name.startswith("--") and name not in cmd.option_names():
            problems.append(f"{where}: `{cmd.title} {name}`: {cmd.title} has no option {name}")
    return problems


def help_without_example() -> list[str]:
    """Commands whose ``--help`` text lacks an ``Example:`` line naming the command."""
    problems = []
    for cmd in load_gen_docs().commands():
        help_text = cmd.command.help or ""
        if not re.search(rf"Example:\s+{re.escape(cmd.title)}\b", help_text):
            problems.append(f"{cmd.title}: --help has no 'Example: {cmd.title} ...' line")
    return problems


# -- configuration -------------------------------------------------------------------------------
def config_default(f: dataclasses.Field) -> str:
    """A field's default as docs/config.md shows it: ``required``, ``section`` or the YAML
    value in backticks."""
    import yaml

    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value) or f.name == "data":
        return "section"
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"`{text.removesuffix('...').strip()}`"


def config_options() -> dict[str, str]:
    """``{dotted key: default}`` of every training option, walked from the dataclasses."""
    from medseg.training.config import AugmentConfig, DataConfig, MoreData, TrainConfig

    out = {}
    for kind, prefix in ((TrainConfig, ""), (DataConfig, "data."), (MoreData, "data.more[]."),
                         (AugmentConfig, "augment.")):
        for f in dataclasses.fields(kind):
            out[prefix + f.name] = config_default(f)
    out["data"] = "section"
    return out


def config_problems(root: Path) -> list[str]:
    """Options without a row in docs/config.md, rows with another default, rows for options
    that do not exist."""
    rows = dict(re.findall(r"^\| `([\w.\[\]]+)` \| ([^|]+?) \|", (root / "docs" / "config.md")
                           .read_text(encoding="utf-8"), flags=re.MULTILINE))
    problems = []
    for key, default in config_options().items():
        if key not in rows:
            problems.append(f"config option {key} has no row in docs/config.md")
        elif rows[key] != default:
            problems.append(f"config option {key}: docs/config.md says {rows[key]}, the code "
                            f"{default}")
    for key in sorted(set(rows) - set(config_options())):
        problems.append(f"docs/config.md documents {key}, which is no config option")
    return problems


# -- output records --------------------------------------------------------------------------
#: Record dictionaries whose keys are data (label names, formats, libraries), not fields.
DATA_KEYED = {"outputs", "skipped_outputs", "volumes_ml", "areas", "versions", "failed"}


def record_keys(value: Any, *, parent: str = "") -> set[str]:
    """Every field name in a JSON record, nested ones included (dicts in lists too), except
    the keys of :data:`DATA_KEYED` dictionaries."""
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            keys.add(key)
            if key not in DATA_KEYED:
                keys |= record_keys(inner, parent=key)
    elif isinstance(value, list):
        for inner in value:
            keys |= record_keys(inner, parent=parent)
    return keys


def undocumented_record_fields(root: Path, keys: Iterable[str]) -> list[str]:
    text = (root / "docs" / "outputs.md").read_text(encoding="utf-8")
    return [f"record field {k} is not in docs/outputs.md" for k in sorted(set(keys))
            if f"`{k}`" not in text]


def undocumented_csv_columns(root: Path) -> list[str]:
    from medseg.inference.measure import LESION_COLUMNS, OBJECT_COLUMNS_2D

    text = (root / "docs" / "outputs.md").read_text(encoding="utf-8")
    return [f"CSV column {c} is not in docs/outputs.md"
            for c in (*OBJECT_COLUMNS_2D, *LESION_COLUMNS) if f"`{c}`" not in text]


# -- links ---------------------------------------------------------------------------------
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings, plus explicit ``<a id=...>``."""
    text = _CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    anchors |= set(re.findall(r"<a (?:id|name)=\"([^\"]+)\"", text))
    return anchors


def broken_links(root: Path) -> list[str]:
    """Relative links and images in the docs that point at no file, or at no heading."""
    problems = []
    for path in doc_files(root):
        text = _CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}: ({target})"
            if not dest.exists():
                problems.append(f"{where} points at nothing")
            elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest):
                problems.append(f"{where}: {dest.name} has no heading #{anchor}")
    return problems


def fit_help_problems(root: Path) -> list[str]:
    """Troubleshooting links the fit report and the confidence warning print that lead nowhere."""
    sources = [root / "medseg" / "inference" / "fit.py",
               root / "medseg" / "inference" / "confidence.py"]
    page = root / "docs" / "troubleshooting.md"
    anchors = heading_anchors(page) if page.exists() else set()
    problems = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        found = set(re.findall(r"troubleshooting\.md#([\w-]+)", text))
        found |= set(re.findall(r'^\s+"\w+": "(fit-[\w-]+)",$', text, flags=re.MULTILINE))
        problems += [f"{source.name}: docs/troubleshooting.md has no #{a}"
                     for a in sorted(found - anchors)]
    return problems


# -- models, workflows --------------------------------------------------------------------------
def models_without_row(root: Path) -> list[str]:
    from medseg.models import list_models

    problems = []
    for rel in ("README.md", "docs/models.md"):
        text = (root / rel).read_text(encoding="utf-8")
        for name in list_models():
            if not re.search(rf"^\| \[`{re.escape(name)}`\]", text, flags=re.MULTILINE):
                problems.append(f"{rel}: shipped model {name} has no row in the models table")
    return problems


def unlisted_workflows(root: Path) -> list[str]:
    text = (root / "workflows" / "README.md").read_text(encoding="utf-8")
    return [f"workflows/README.md does not list {p.name}"
            for p in sorted((root / "workflows").glob("*.yaml")) if f"`{p.name}`" not in text]


# -- bookkeeping words ---------------------------------------------------------------------------
#: Built from pieces so that this file does not match itself.
BOOKKEEPING = re.compile(r"\b(?:" + "sess" + r"ion|" + "iss" + r"ue) [0-9]+|\(#[0-9]+\)",
                         re.IGNORECASE)


def tree_files(root: Path) -> list[Path]:
    """Files of the tree (tracked, and untracked ones git does not ignore); outside a git
    checkout every file except .git/ and .venv/."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                              "-z"], cwd=root, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
        if not names:
            raise ValueError("not a checkout")
        return [root / n for n in names if (root / n).is_file()]
    except (OSError, subprocess.CalledProcessError, ValueError):
        return [p for p in root.rglob("*") if p.is_file()
                and not {".git", ".venv"} & set(p.relative_to(root).parts)]


def bookkeeping_words(root: Path) -> list[str]:
    problems = []
    for path in tree_files(root):
        if {".git", ".venv"} & set(path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        for number, line in enumerate(text.splitlines(), 1):
            match = BOOKKEEPING.search(line)
            if match:
                problems.append(f"{path.relative_to(root)}:{number}: {match.group(0)!r}")
    return problems


# -- generated files -----------------------------------------------------------------------------
def stale_generated(root: Path) -> list[str]:
    """Generated files (docs/cli.md, the models and label-id tables) that differ from what
    ``scripts/gen_docs.py`` writes for this tree."""
    return [f"{path.relative_to(root)} differs from scripts/gen_docs.py's output (run it)"
            for path, text in load_gen_docs().generated(root).items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]
