"""`alarm config show` and the generated references (alarm.recipes.settings): the CLI page lists every command
and option of the real parser, the settings page every setting of every recipe section."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from rich.console import Console

from alarm.cli import build_parser, main
from alarm.config import settings_of
from alarm.recipes.settings import KINDS, cli_markdown, recipe_kind, settings_markdown, show, walk_commands

RECIPES = Path(__file__).parents[1] / "recipes"


def _show(*args, kind=None) -> str:
    console = Console(width=200, record=True)
    show(str(RECIPES / args[0]), list(args[1:]), kind, console=console)
    return console.export_text()


def test_config_show_prints_the_resolved_recipe_with_defaults_and_descriptions():
    out = _show("quickstart.yaml", "ppo.steps=3", "combine.epsilon=0.5")
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    # set by the override: the value, then the default it replaces
    assert re.search(r"steps\s+3\s+100\s+PPO steps", rows["steps"])
    assert re.search(r"epsilon\s+0\.5\s+0\.6\s+the gate", rows["epsilon"])
    # from the file, and a default the file does not mention (filled in, no second value)
    assert re.search(r"lora_layers\s+\[20, 21", rows["lora_layers"])
    assert re.search(r"cliprange_value\s+0\.2\s+value clip", rows["cliprange_value"])
    for section in ("model", "data", "rewards", "combine", "sample", "selection", "ppo", "eval"):
        assert re.search(rf"^{section}\s*$", out, re.M), section


@pytest.mark.parametrize(("recipe", "kind", "section"), [
    ("vcb_quickstart.yaml", "vcb", "vcb"), ("rm_holistic_evidence.yaml", "rm", None), ("mt.yaml", "ppo", "ppo")])
def test_config_show_reads_each_kind_of_recipe(recipe, kind, section):
    import yaml

    assert recipe_kind(yaml.safe_load((RECIPES / recipe).read_text())) == kind
    out = _show(recipe)
    assert f"{kind} recipe, read by {KINDS[kind][0]}" in out
    if section:
        assert re.search(rf"^{section}\s*$", out, re.M)


def test_config_show_on_the_command_line(capsys):
    assert main(["config", "show", str(RECIPES / "quickstart.yaml"), "ppo.steps=2"]) == 0
    assert "adaptive_kl_target" in capsys.readouterr().out
    assert main(["config", "show", str(RECIPES / "quickstart.yaml"), "ppo.stepz=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alarm: error: ppo.stepz: unknown setting; did you mean ppo.steps?") and "\n" not in err
    assert "valid in ppo:" in err and "learning_rate" in err


def test_the_cli_reference_lists_every_command_and_option():
    parser = build_parser()
    page = cli_markdown(parser)
    commands = list(walk_commands(parser))
    assert len(commands) >= 15
    headings = re.findall(r"^## `(alarm [^`]+)`$", page, re.M)
    assert headings == [c for c, _, _ in commands]
    for full, sub, _ in commands:
        section = page.split(f"## `{full}`", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for name in action.option_strings or [action.metavar or action.dest]:
                assert name in section, f"{full}: {name} missing from the CLI reference"
    # every leaf a user can reach: `alarm config show`, the nested `alarm rm evaluate`, `alarm vcb train`
    assert {"alarm config show", "alarm rm evaluate", "alarm vcb train", "alarm quickstart"} <= set(headings)


def test_the_settings_reference_lists_every_setting_of_every_section():
    page = settings_markdown()
    for kind, (_, model_cls) in KINDS.items():
        part = page.split(f"## {kind} recipes", 1)[1].split("\n## ", 1)[0]
        todo = [(model_cls, "")]
        while todo:
            model, prefix = todo.pop()
            body = part if not prefix else part.split(f"### `{prefix}`", 1)[1].split("\n### ", 1)[0]
            for s in settings_of(model):
                if s.section is not None:
                    todo.append((s.section, f"{prefix}.{s.name}" if prefix else s.name))
                else:
                    row = next((r for r in body.splitlines() if r.startswith(f"| <code>{s.name}</code> |")), None)
                    assert row is not None, f"{kind} {prefix or 'top level'}.{s.name} missing"
                    assert s.description.split()[0] in row


def test_the_settings_reference_lists_every_reward_type_and_its_settings():
    from alarm.config import reward_settings, reward_types

    part = settings_markdown().split("## Reward types", 1)[1]
    for kind in reward_types():
        row = next((r for r in part.splitlines() if r.startswith(f"| `{kind}` |")), None)
        assert row is not None, kind
        settings = reward_settings(kind)
        assert settings is not None, f"{kind}: its settings cannot be read (a recipe typo would pass unchecked)"
        for name in settings:
            assert f"`{name}`" in row, f"{kind}.{name}"


def test_a_reward_models_settings_are_checked_before_it_loads():
    """sequence_classifier / span_model build through from_pretrained(**kw): their constructor's settings count."""
    from alarm.config import load_recipe
    from alarm.errors import AlarmError

    with pytest.raises(AlarmError, match=r"rewards.holistic.batchsize: unknown setting for sequence_classifier; "
                                         r"did you mean rewards.holistic.batch_size\?"):
        load_recipe(None, ["rewards.holistic={type: sequence_classifier, path: x, batchsize: 4}"])
    load_recipe(None, ["rewards.holistic={type: sequence_classifier, path: x, batch_size: 4, template: '{prompt}'}"])


def test_every_option_of_every_command_has_help():
    """What the CLI reference shows beside each option: nothing left blank (TRL's fields each carry help)."""
    blank = [f"{full} {a.option_strings or a.dest}" for full, sub, _ in walk_commands(build_parser())
             for a in sub._actions if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not blank, f"options without help: {blank}"
