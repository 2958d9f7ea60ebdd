"""The user pages (README.md and docs/, the experiments log aside) read as a guide, not a work log: no issue
numbers, run letters, run dates or session narration — those belong in docs/experiments.md."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NARRATION = {
    "an issue number": re.compile(r"\bissues?[- ]?#?\d+", re.I),
    "a run letter": re.compile(r"\b[Rr]uns? `?[A-M]`?(?:\b|[–-])"),
    "a run directory of an experiment": re.compile(r"\bqs_exp\b"),
    "a date": re.compile(r"\b20\d\d-\d\d-\d\d\b"),
    "session narration": re.compile(r"\bsessions?\b|\btoday\b|\byesterday\b|\bthis morning\b", re.I),
}


def user_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [p for p in pages if p.name != "experiments.md"]


def narration(text: str) -> list[str]:
    return [f"{what}: {m.group(0)!r}" for what, rx in NARRATION.items() for m in rx.finditer(text)]


def test_the_user_pages_are_there():
    names = {p.name for p in user_pages()}
    assert {"README.md", "index.md", "getting-started.md", "concepts.md", "method.md", "results.md"} <= names
    assert (ROOT / "docs" / "experiments.md").exists()


@pytest.mark.parametrize("page", user_pages(), ids=lambda p: p.name)
def test_no_work_log_narration_in_user_pages(page):
    found = narration(page.read_text())
    assert not found, f"{page.name}: {found} (dated runs and their story go to docs/experiments.md)"


def test_the_generated_references_carry_none_either():
    from alarm.cli import build_parser
    from alarm.recipes.settings import cli_markdown, settings_markdown

    assert not narration(cli_markdown(build_parser()) + settings_markdown())


@pytest.mark.parametrize("text", [
    "as issue 16 item 5 asked", "the issue-16 target", "run L: 36 steps", "runs B–I", "runs `runs/qs_exp/F`",
    "measured 2026-12-02", "this session's changes", "PPO 29 min today"])
def test_the_check_catches_narration(text):
    assert narration(text)


@pytest.mark.parametrize("text", [
    "alarm run --config recipes/quickstart.yaml", "run a recipe end to end", "a training run of 12 steps", "the Issues tab",
    "runs/quickstart", "Run it again", "PPO runs under accelerate"])
def test_the_check_leaves_plain_prose_alone(text):
    assert not narration(text)


_PATH = re.compile(r"(?<![\w/.$-])((?:benchmarks|experiments|recipes|accelerate_configs|scripts|examples|tests|docs|src)"
                   r"/[\w./*{},-]*[\w*}])")


def _expand(path: str) -> list[str]:
    """``a/{b,c}.md`` → ``a/b.md``, ``a/c.md``."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def missing_paths(text: str) -> list[str]:
    out = []
    for m in _PATH.finditer(text):
        if text[m.end():m.end() + 1] == "<":  # a pattern (tests/test_<module>.py), not a file
            continue
        for path in _expand(m.group(1).rstrip(".,")):
            found = list(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).exists() else []
            if not found:
                out.append(path)
    return out


@pytest.mark.parametrize("page", user_pages(), ids=lambda p: p.name)
def test_every_file_a_user_page_names_exists(page):
    """A script or result moved or deleted must not leave a page pointing at nothing."""
    assert not missing_paths(page.read_text()), f"{page.name} names files that do not exist"


def test_the_path_check_finds_a_missing_file():
    assert missing_paths("see `benchmarks/no_such_script.py` and recipes/{quickstart,nope}.yaml") == [
        "benchmarks/no_such_script.py", "recipes/nope.yaml"]
    assert not missing_paths("`recipes/rm_*_evidence.yaml`, `accelerate_configs/ds_zero{2,3}.json`, runs/x/y, "
                             "`tests/test_<module>.py`")


def _slug(heading: str) -> str:
    """The anchor of a Markdown heading, as MkDocs and GitHub make it for plain headings."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower().replace("`", ""))
    return re.sub(r"[\s]+", "-", text)


def test_the_readmes_links_into_the_docs_land_on_a_heading():
    links = re.findall(r"\]\((docs/[\w-]+\.md)(?:#([\w-]+))?\)", (ROOT / "README.md").read_text())
    assert len(links) >= 8
    for page, anchor in links:
        assert (ROOT / page).exists(), page
        if anchor:
            headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", (ROOT / page).read_text(), re.M)}
            assert anchor in headings, f"{page}#{anchor}: no such heading"
