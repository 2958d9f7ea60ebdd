"""`alarm config show RECIPE [key=value ...]`: a recipe resolved — the file, the overrides and every default —
with each setting's description; and the two references the docs are built from, the settings of every
recipe section and the whole command line, generated from the models and the parser so neither can drift."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alarm.config import (
    REQUIRED,
    Recipe,
    read_settings,
    reward_settings,
    reward_types,
    settings_of,
    validate_recipe,
    validate_settings,
)
from alarm.recipes.vcb import VCBRecipe
from alarm.reward_models.train import RMTrainConfig
from alarm.trainers.sft import SFTConfig

# What a recipe file configures: the command that reads it, and its settings model.
KINDS: dict[str, tuple[str, type[BaseModel]]] = {
    "ppo": ("alarm run / train / quickstart", Recipe),
    "vcb": ("alarm vcb sample / train", VCBRecipe),
    "rm": ("alarm rm train / evaluate", RMTrainConfig),
    "sft": ("alarm sft", SFTConfig),
}


def recipe_kind(data: dict) -> str:
    """Which command a recipe's settings are for: a ``vcb`` section → vcb, a ``kind`` → a reward model, only
    SFT keys → sft, else a PPO run."""
    if "vcb" in data or "train_dir" in data:
        return "vcb"
    if "kind" in data:
        return "rm"
    if data and set(data) <= set(SFTConfig.model_fields) and not set(data) <= set(Recipe.model_fields):
        return "sft"
    return "ppo"


def _recipe_path(name: str) -> str:
    """A recipe file, or the packaged recipe of that name (``quickstart``, ``vcb_hh_offline.yaml``)."""
    if Path(name).exists() or Path(name).parent != Path("."):
        return name
    packaged = resources.files("alarm") / "recipes" / (name if name.endswith(".yaml") else f"{name}.yaml")
    return str(packaged) if packaged.is_file() else name


def resolve(path: str, overrides: list[str] | None = None, kind: str | None = None) -> tuple[str, BaseModel]:
    """The recipe at ``path`` with ``overrides``, validated as the command that reads it would."""
    data = read_settings(_recipe_path(path), overrides)
    kind = kind or recipe_kind(data)
    model_cls = KINDS[kind][1]
    if kind in ("ppo", "vcb"):
        return kind, validate_recipe(data, model_cls)
    return kind, validate_settings(model_cls, data)


def _show(value: Any) -> str:
    if value is REQUIRED:
        return "(required)"
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, tuple):
        value = list(value)
    if value is None or isinstance(value, bool | dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _sections(model_cls, value, prefix: str = ""):
    """(section name, [(Setting, value)]) for a resolved recipe, nested sections after the top-level ones."""
    top, nested = [], []
    for s in settings_of(model_cls):
        v = getattr(value, s.name)
        if s.section is not None:
            if not isinstance(v, BaseModel) and not hasattr(v, "__dataclass_fields__"):
                v = value.combine_config() if s.name == "combine" else v
            nested.append((s, v))
        else:
            top.append((s, v))
    if top:
        yield prefix or "(top level)", top
    for s, v in nested:
        yield from _sections(s.section, v, f"{prefix}.{s.name}" if prefix else s.name)


def show(path: str, overrides: list[str] | None = None, kind: str | None = None, console=None) -> str:
    """Print the resolved recipe, one table per section; returns the kind of recipe it is."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    kind, recipe = resolve(path, overrides, kind)
    console = console or Console()
    command, model_cls = KINDS[kind]
    console.print(f"[bold]{path}[/bold]: {kind} recipe, read by {command}; the default is shown where a value "
                  "differs from it")
    for section, rows in _sections(model_cls, recipe):
        table = Table(title=section, title_justify="left", box=box.SIMPLE_HEAD, expand=False)
        table.add_column("setting", style="cyan", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("default", overflow="fold", style="dim")
        table.add_column("description", overflow="fold")
        model = model_cls if section == "(top level)" else _section_model(model_cls, section)
        defaults = {s.name: s.default for s in settings_of(model)}
        for s, v in rows:
            value, default = _show(v), _show(defaults[s.name])
            changed = value != default
            table.add_row(s.name, f"[bold]{_escape(value)}[/bold]" if changed else _escape(value),
                          _escape(default) if changed else "", _escape(s.description or ""))
        console.print(table)
    return kind


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _section_model(model_cls, dotted: str):
    for part in dotted.split("."):
        model_cls = next(s.section for s in settings_of(model_cls) if s.name == part)
    return model_cls


def cmd_show(args) -> int:
    show(args.recipe, args.overrides, args.kind)
    return 0


def add_commands(subparsers) -> None:
    """``alarm config show``."""
    p = subparsers.add_parser("config", help="recipe settings: show a recipe resolved, with descriptions",
                              description="recipe settings")
    sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    text = "print a recipe resolved (file, overrides, defaults) with each setting's description"
    s = sub.add_parser("show", help=text, description=text)
    s.add_argument("recipe", metavar="RECIPE", help="recipe YAML (or the name of a packaged one, e.g. quickstart)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. ppo.steps=10")
    s.add_argument("--kind", choices=list(KINDS), help="the recipe's command family (default: read from its keys)")
    s.set_defaults(handler=cmd_show)


# ------------------------------------------------------------------------------------ the docs' references


def _cell(text: str) -> str:
    """Text for a Markdown table cell (prose, not code: ``<name>`` would read as an HTML tag)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Code inside a Markdown table cell: HTML, because a pipe escaped inside backticks shows its backslash."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")
    return f"<code>{text}</code>"


def _md_default(value: Any) -> str:
    return "required" if value is REQUIRED else _code(_show(value))


def settings_markdown() -> str:
    """The settings reference: per recipe kind and section, each setting's name, type, default, description."""
    out = ["# Settings reference", "",
           "Every setting of every recipe section, generated from the settings models when the docs are built. "
           "`alarm config show RECIPE` prints a recipe resolved with these descriptions; a key that is not "
           "listed here is refused with the section's valid keys.", ""]
    for kind, (command, model_cls) in KINDS.items():
        out += [f"## {kind} recipes: `{command}`", ""]
        doc = (model_cls.__doc__ or "").strip().split("\n\n")[0]
        if doc:
            out += [" ".join(doc.split()), ""]
        for section, rows in _model_sections(model_cls, kind):
            out += [f"### {section}", "", "| setting | type | default | description |", "|---|---|---|---|"]
            out += [f"| {_code(s.name)} | {_code(s.type)} | {_md_default(s.default)} | {_cell(s.description or '')} |"
                    for s in rows]
            out.append("")
    out += ["## Reward types", "",
            "An entry of `rewards.holistic` or `rewards.aspects.<name>` is `{type: <reward type>, <its settings>}`; a "
            "setting a type does not take is refused with the type's valid settings. `name` defaults to the "
            "aspect's key.", "", "| type | settings (default) | what it scores |", "|---|---|---|"]
    for kind, build in reward_types().items():
        settings = reward_settings(kind)
        shown = "any" if settings is None else ", ".join(
            f"`{k}`" if v is REQUIRED else f"`{k}` ({_cell(_show(v))})" for k, v in settings.items())
        owner = getattr(build, "__self__", build)
        doc = " ".join((owner.__doc__ or "").strip().split("\n\n")[0].split())
        out.append(f"| `{kind}` | {shown} | {_cell(doc)} |")
    out.append("")
    return "\n".join(out)


def _model_sections(model_cls, label: str, prefix: str = ""):
    top, nested = [], []
    for s in settings_of(model_cls):
        (nested if s.section is not None else top).append(s)
    if top:
        yield f"`{prefix}`" if prefix else f"{label}: top level", top
    for s in nested:
        yield from _model_sections(s.section, label, f"{prefix}.{s.name}" if prefix else s.name)


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)


def walk_commands(parser: argparse.ArgumentParser, prefix: str = "alarm"):
    """(full command, parser, help) for every command that runs something, depth first."""
    for name, sub, help_ in _subcommands(parser):
        full = f"{prefix} {name}"
        if any(True for _ in _subcommands(sub)):
            yield from walk_commands(sub, full)
        else:
            yield full, sub, help_


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """The command-line reference: every command, its usage and each option with its help."""
    out = ["# Command-line reference", "",
           "Every `alarm` command with its options, generated from the command-line parser when the docs are "
           "built. Errors a user can cause are one line (`alarm: error: …`) with exit code 2.", ""]
    for full, sub, help_ in walk_commands(parser):
        out += [f"## `{full}`", ""]
        if help_ or sub.description:
            out += [_cell(" ".join((sub.description or help_).split())), ""]
        usage = " ".join(sub.format_usage().split())
        out += ["```text", usage.removeprefix("usage: "), "```", "", "| argument | help |", "|---|---|"]
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            names = ", ".join(a.option_strings) or (a.metavar if isinstance(a.metavar, str) else a.dest)
            names = f"{names} {a.metavar}" if a.option_strings and isinstance(a.metavar, str) else names
            extra = ""
            if a.choices and not isinstance(a, argparse._SubParsersAction):
                extra += f" (one of: {', '.join(_code(str(c)) for c in a.choices)})"
            if a.default not in (None, False, argparse.SUPPRESS) and a.option_strings and a.nargs != 0:
                extra += f" (default: {_code(str(a.default))})"
            out.append(f"| {_code(names)} | {_cell(a.help or '')}{extra} |")
        out.append("")
    return "\n".join(out)
