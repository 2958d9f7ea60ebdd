"""MkDocs hook: the command-line and settings reference pages, generated when the site is built from alarm's
own parser (alarm.cli.build_parser) and settings models, so neither page can drift from the code."""

from __future__ import annotations

from mkdocs.structure.files import File


def on_files(files, config):
    from alarm.cli import build_parser
    from alarm.recipes.settings import cli_markdown, settings_markdown

    for name, text in (("cli.md", cli_markdown(build_parser())), ("settings.md", settings_markdown())):
        files.append(File.generated(config, name, content=text))
    return files
