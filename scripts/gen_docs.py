"""Write the generated parts of the documentation from the code and the model cards.

* ``docs/cli.md``: every command of every medseg console script, from the Typer apps
  (``typer.main.get_command``: the same command model the shells parse with), with each
  option's names, type, default and help.
* The models table in ``README.md`` and ``docs/models.md`` (between the
  ``<!-- models-table:start -->`` and ``<!-- models-table:end -->`` markers), from the shipped
  models' cards: name, what it segments, the input it is for, label ids, validated score with
  its data, and the licence of its training data; and the label ids per model in
  ``docs/outputs.md`` (``<!-- label-ids:... -->``).

Usage (repository root)::

    .venv/bin/python scripts/gen_docs.py           # rewrite the files
    .venv/bin/python scripts/gen_docs.py --check   # exit 1 if a committed file differs

``tests/docs/test_generated.py`` runs the check, so the committed files always equal what this
script writes.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"
#: Generated tables: ``{marker: files holding it}``; each sits between
#: ``<!-- marker:start -->`` and ``<!-- marker:end -->``.
TABLE_FILES = {"models-table": ("README.md", "docs/models.md"),
               "label-ids": ("docs/outputs.md",)}

#: The validated score of each shipped model, in words, with the data it was measured on and
#: the committed benchmark output that holds it. The cards record training-time validation
#: Dice, not a uniform held-out score (an instance model's is AP, an EM model's a pixel error),
#: so the figure a user should quote is kept here, next to its source; a model without an entry
#: stops the generator (and the doc tests).
SCORES: dict[str, str] = {
    "brain-flair-tumour": "per-patient Dice mean 0.81, median 0.87 on all 48 patients held "
                          "out by cross-validation (`tumour_cv.txt`)",
    "brain-flair-tumour-fast": "per-patient Dice mean 0.71, median 0.84 on the 34 patients "
                               "it was not trained on (`tumour_fast_unseen.txt`); 3.0x the "
                               "slices/s (`presets_2d.txt`)",
    "demo-liver-lesion": "Dice liver 0.993, lesion 0.957, 3 of 3 lesions found on the seed-0 "
                         "synthetic demo study (`demo.txt`)",
    "hippocampus": "Dice anterior 0.893, posterior 0.877 on 42 held-out MSD cases, with "
                   "`--tta` (`eval_hippocampus.txt`)",
    "isbi2012": "challenge pixel error 0.0448 on 4 held-out slices, with `--tta` "
                "(`eval_isbi2012.txt`)",
    "isbi2012-fast": "challenge pixel error 0.0463 on the same 4 slices; 7.74 slices/s "
                     "(`presets_2d.txt`)",
    "nuclei": "AP@0.5 0.773 pooled over the 3,632 nuclei of 70 held-out images, 0.850 per "
              "image (`nuclei_eval.txt`)",
    "nuclei-fast": "AP@0.5 0.638 pooled, 0.811 per image, same 70 images (`presets_2d.txt`)",
}

#: Licence of each training data folder (``training.dataset.path`` of a card, by folder name),
#: as its ``SOURCE.txt`` in the shared data states it.
DATA_LICENCES: dict[str, str] = {
    "msd_hippocampus": "CC-BY-SA 4.0 (Medical Segmentation Decathlon)",
    "isbi2012_em": "ISBI 2012 challenge terms (non-commercial use, cite the challenge; "
                   "unverified)",
    "dsb2018_nuclei": "CC0 1.0 (2018 Data Science Bowl, BBBC038)",
    "lgg_flair": "**unverified: research use only** (TCGA-LGG via Kaggle)",
    "lgg_flair_more": "**unverified: research use only** (TCGA-LGG)",
}
SYNTHETIC_LICENCE = "synthetic data made by medseg (Apache-2.0, like the code)"


# -- the command model ----------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One command a user types: ``medseg-predict`` or ``medseg-evaluate model``."""

    program: str
    name: str | None  # sub-command, or None for a single-command app
    command: Any  # typer's click Command (typer vendors click: not ``click.Command``)

    @property
    def title(self) -> str:
        return f"{self.program} {self.name}" if self.name else self.program

    def options(self) -> list[Any]:
        return [p for p in self.command.params if is_option(p)]

    def option_names(self) -> set[str]:
        """Every spelling of every option, ``--help`` included."""
        names = {"--help"}
        for p in self.options():
            names.update(p.opts)
            names.update(p.secondary_opts)
        return names


def is_option(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def console_scripts() -> dict[str, str]:
    """``{program: "module:function"}`` from pyproject.toml's ``[project.scripts]``."""
    # read by hand: tomllib is Python 3.11+, and medseg supports 3.10
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, flags=re.MULTILINE))


def cli_apps() -> dict[str, typer.Typer]:
    """``{program: Typer app}`` for every console script (each lives in ``medseg/cli/``)."""
    apps = {}
    for program, target in console_scripts().items():
        module = importlib.import_module(target.split(":")[0])
        apps[program] = module.app
    return apps


def commands() -> list[Command]:
    """Every command of every console script, in a stable order."""
    found = []
    for program, app in sorted(cli_apps().items()):
        root = typer.main.get_command(app)
        if is_group(root):
            for name in sorted(root.commands):
                found.append(Command(program, name, root.commands[name]))
        else:
            found.append(Command(program, None, root))
    return found


def group_of(program: str) -> Any:
    return typer.main.get_command(cli_apps()[program])


# -- docs/cli.md -----------------------------------------------------------------------------
def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(param: Any) -> str:
    if param.required:
        return "required"
    value = param.default
    if param.is_flag and param.secondary_opts:
        if value is None:  # neither flag given: the code decides (the help says how)
            return "auto"
        return (param.opts if value else param.secondary_opts)[0]
    if param.is_flag:
        return "off" if not value else "on"
    if value is None or value == () or value == []:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _type(param: Any) -> str:
    if is_option(param) and param.is_flag:
        return "flag"
    annotation = param.type_descriptor.annotation
    inner = typing.get_args(annotation)
    base = inner[0] if inner else annotation
    return {str: "text", int: "integer", float: "number", Path: "path"}.get(
        base, getattr(base, "__name__", str(base)))


def _help_text(cmd: Any) -> str:
    text = (cmd.help or "").strip()
    return "\n".join(line.strip() for line in text.splitlines())


def render_cli() -> str:
    lines = ["# Command reference", "",
             "<!-- Generated by scripts/gen_docs.py from the Typer apps; do not edit by hand. -->",
             "",
             "Every command and option of medseg's console scripts, as `--help` prints them. "
             "What the options are for, with worked examples: [predict.md](predict.md), "
             "[train.md](train.md), [outputs.md](outputs.md).", ""]
    by_program: dict[str, list[Command]] = {}
    for cmd in commands():
        by_program.setdefault(cmd.program, []).append(cmd)
    lines += ["| command | what it does |", "|---|---|"]
    for cmd in commands():
        anchor = cmd.title.replace(" ", "-")
        first = _help_text(cmd.command).split("\n\n")[0]
        lines.append(f"| [`{cmd.title}`](#{anchor}) | {_cell(first)} |")
    lines.append("")
    for program, cmds in by_program.items():
        group = group_of(program)
        if is_group(group):
            lines += [f"## {program}", "", _help_text(group), ""]
        for cmd in cmds:
            lines += _render_command(cmd)
    return "\n".join(lines).rstrip() + "\n"


def _render_command(cmd: Command) -> list[str]:
    ctx = cmd.command.context_class(cmd.command, info_name=cmd.title)
    usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(),  # typer's {inputs}: INPUTS
                   " ".join(cmd.command.collect_usage_pieces(ctx)))
    level = "###" if cmd.name else "##"
    out = [f"{level} {cmd.title}", "", "```", f"{cmd.title} {usage}", "```", "",
           _help_text(cmd.command), ""]
    arguments = [p for p in cmd.command.params if not is_option(p)]
    if arguments:
        out += ["| argument | type | help |", "|---|---|---|"]
        for p in arguments:
            many = " (one or more)" if p.nargs == -1 else ""
            out.append(f"| `{p.name.upper()}` | {_type(p)}{many} | "
                       f"{_cell(getattr(p, 'help', '') or '')} |")
        out.append("")
    out += ["| option | type | default | help |", "|---|---|---|---|"]
    for p in cmd.options():
        names = ", ".join(f"`{n}`" for n in [*p.opts, *p.secondary_opts])
        repeat = " (repeatable)" if p.multiple else ""
        out.append(f"| {names} | {_type(p)}{repeat} | {_cell(_default(p))} | "
                   f"{_cell(p.help or '')} |")
    out.append("")
    return out


# -- the models table ------------------------------------------------------------------------
def _cards() -> Iterator[Any]:
    from medseg.model_card import read_model_card
    from medseg.models import list_models, resolve_model

    for name in list_models(user=False):  # the shipped ones, not this machine's own
        yield read_model_card(resolve_model(name))


def _segments(card: Any, intended: dict[str, str]) -> str:
    text = str((card.domain or {}).get("intended_use") or "")
    if text:
        return text
    base = card.name.removesuffix("-fast")
    if base != card.name and intended.get(base):
        return f"as `{base}`, with a smaller, faster network (fast preset)"
    return card.description.split(". ")[0]


def _input(card: Any) -> str:
    modality = {"MR": "MR", "CT": "CT", "EM": "electron microscopy"}.get(
        card.modality, card.modality.lower() or "any modality")
    channels = (f", channel {', '.join(str(c) for c in card.input_channels)}"
                if card.input_channels else "")
    unit = (card.domain or {}).get("unit", "mm")
    if len(card.roi_size) == 3:
        spacing = "x".join(f"{s:g}" for s in card.target_spacing or [])
        return f"{modality} 3D volume{channels}, run at {spacing} mm"
    if card.fov_pixels:
        fov = "x".join(str(v) for v in card.fov_pixels)
        return (f"{modality} volume{channels}, slice by slice, each slice resampled to {fov} "
                "pixels")
    where = "on its own pixels" if unit == "px" else "resampled to the training pixel size"
    return f"{modality} 2D image{channels}, {where}"


def _licence(card: Any) -> str:
    if (card.domain or {}).get("synthetic"):
        return SYNTHETIC_LICENCE
    data = (card.training or {}).get("config", {}).get("data", {})
    folders = [data.get("path", ""), *(m.get("path", "") for m in data.get("more", []))]
    # the data folder is the path part named in DATA_LICENCES (isbi2012_em/train: isbi2012_em)
    names = [next((part for part in Path(str(f)).parts if part in DATA_LICENCES), str(f))
             for f in folders if f]
    missing = [n for n in names if n not in DATA_LICENCES]
    if missing or not names:
        raise SystemExit(f"gen_docs: model {card.name!r} was trained on {names or 'no folder'}; "
                         "add its data licence to DATA_LICENCES in scripts/gen_docs.py")
    return "; ".join(dict.fromkeys(DATA_LICENCES[n] for n in names))


def render_models_table() -> str:
    cards = list(_cards())
    intended = {c.name: str((c.domain or {}).get("intended_use") or "") for c in cards}
    rows = ["| model | segments | input | label ids | validated | training data licence |",
            "|---|---|---|---|---|---|"]
    for card in cards:
        if card.name not in SCORES:
            raise SystemExit(f"gen_docs: model {card.name!r} has no validated score; add it "
                             "to SCORES in scripts/gen_docs.py with its benchmark output")
        rows.append(f"| [`{card.name}`](docs/models.md#{card.name}) | "
                    f"{_cell(_segments(card, intended))} | {_cell(_input(card))} | "
                    f"{_cell(card.output_labels())} | {_cell(SCORES[card.name])} | "
                    f"{_cell(_licence(card))} |")
    return "\n".join(rows)


def render_label_ids() -> str:
    rows = ["| model | label ids |", "|---|---|"]
    rows += [f"| `{card.name}` | {_cell(card.output_labels())} |" for card in _cards()]
    return "\n".join(rows)


def with_table(text: str, marker: str, table: str, *, where: str) -> str:
    """``text`` with the part between ``marker``'s start and end comments replaced."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"gen_docs: {where} lacks the {start} / {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def generated(root: Path = ROOT) -> dict[Path, str]:
    """``{path: text}`` of every file this script writes, for the tree at ``root``."""
    out = {root / "docs" / "cli.md": render_cli()}
    models = render_models_table()
    tables = {"models-table": models, "label-ids": render_label_ids()}
    for marker, files in TABLE_FILES.items():
        for rel in files:
            path = root / rel
            table = tables[marker]
            if rel.startswith("docs/"):  # links from docs/ to docs/models.md
                table = table.replace("](docs/models.md#", "](models.md#")
            text = out.get(path) or path.read_text(encoding="utf-8")
            out[path] = with_table(text, marker, table, where=rel)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a committed file differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run scripts/gen_docs.py): " + ", ".join(map(str, stale)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
