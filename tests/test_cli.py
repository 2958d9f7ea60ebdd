"""The command line: every command README.md and the docs pages show exists, with the options it shows (the real
parser)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from alarm.cli import build_parser

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_commands() -> list[str]:
    """Every `alarm …` line inside the code blocks of the README and the docs pages (continuation lines joined)."""
    lines, out, in_block = [line for page in PAGES for line in page.read_text().splitlines()], [], False
    buf = ""
    for line in lines:
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        text = buf + line.strip()
        if text.endswith("\\"):
            buf = text[:-1] + " "
            continue
        buf = ""
        if text.startswith("alarm "):
            out.append(text)
    return out


def subparsers(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def command_parser(words: list[str]):
    """The sub-parser a command line names (``alarm vcb train …`` → the ``train`` parser of ``vcb``)."""
    parser, used = build_parser(), []
    for w in words:
        try:
            choices = subparsers(parser)
        except StopIteration:
            break
        if w not in choices:
            break
        parser, used = choices[w], [*used, w]
    return parser, used


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 15


@pytest.mark.parametrize("line", readme_commands())
def test_every_readme_command_matches_the_cli(line):
    words = shlex.split(line.split("  ")[0] if "[" in line else line, comments=True)[1:]
    parser, used = command_parser(words)
    assert used, f"{line!r}: no such command"
    options = {o for a in parser._actions for o in a.option_strings}
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    assert shown <= options, f"{line!r}: {sorted(shown - options)} not options of `alarm {' '.join(used)}`"
    required = {a.option_strings[-1] for a in parser._actions if a.required and a.option_strings}
    assert required <= shown, f"{line!r}: leaves out the required {sorted(required - shown)}"
    if "[" not in line and not re.search(r"\b[A-Z]{2,}\b", line):  # a concrete example: it must parse
        build_parser().parse_args(words)


def test_a_command_that_is_not_there_is_caught():
    parser, used = command_parser(["scores", "--rewards", "x"])
    assert used == []
    parser, used = command_parser(["score", "--config", "x"])
    assert "--config" not in {o for a in parser._actions for o in a.option_strings}
