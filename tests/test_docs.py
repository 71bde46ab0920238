"""The README documents every command, flag, algorithm, model and dataset the code offers."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import fewlabels
from fewlabels.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _mentioned(name: str) -> bool:
    """`name` appears in the README as a whole word (`--steps` does not count as `--step`)."""
    return re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", README) is not None


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = build_parser()._actions
    return next(a for a in actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_cli_command_and_flag_is_in_the_readme():
    commands = _subcommands()
    assert {"train", "evaluate", "predict", "algorithms", "models", "datasets"} <= set(commands)
    missing = [f"fewlabels {name}" for name in commands if not _mentioned(f"fewlabels {name}")]
    for name, parser in commands.items():
        for action in parser._actions:
            longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
            if longs and not _mentioned(longs[0]):  # the first spelling is the documented one; others are aliases
                missing.append(f"fewlabels {name} {longs[0]}")
    assert not missing, f"not documented in the README: {missing}"


def test_every_registered_algorithm_model_and_dataset_is_in_the_readme():
    names = [*fewlabels.list_algorithms(), *fewlabels.list_models(), *fewlabels.list_datasets()]
    assert "fixmatch" in names and "wrn28_2" in names and "fashion-mnist" in names
    missing = [n for n in names if f"`{n}`" not in README]
    assert not missing, f"not documented in the README: {missing}"


def test_readme_tables_have_no_blank_line_inside_them():
    """A blank line inside a Markdown table ends it: the rows after it render as plain text."""
    lines = README.splitlines()
    broken = [
        i + 1
        for i in range(1, len(lines) - 1)
        if not lines[i].strip() and lines[i - 1].startswith("| ") and lines[i + 1].startswith("| ")
        and not lines[i + 2 if i + 2 < len(lines) else i].startswith("|---")
    ]  # fmt: skip
    assert not broken, f"README lines {broken}: a blank line splits a table"
