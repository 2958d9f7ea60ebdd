"""The `alarm` command. Each command family is a recipe module (`alarm.recipes.*`) that reads a YAML recipe
top to bottom to a report, building every input through the library; this file only collects them.

Errors a user can cause are printed as one line (``alarm: error: …``) with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from alarm.errors import AlarmError
from alarm.integrations import serve
from alarm.models import quiet_transformers
from alarm.recipes import evaluation, ppo, qa_feedback, reward_models, settings, sft, vcb


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alarm", description="Align language models with hierarchical rewards.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for recipe in (ppo, evaluation, sft, vcb, reward_models, qa_feedback, serve, settings):
        recipe.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_transformers()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except AlarmError as e:
        print(f"alarm: error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:  # a text file read where no reader named it
        print(f"alarm: error: a file is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}: "
              f"{e.reason}); save it as UTF-8", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise
        # the machine refused a file operation (permissions, a read-only or full disk, a path under /proc …)
        print(f"alarm: error: cannot use {e.filename}: {e.strerror or e}; choose another path or fix its "
              "permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alarm: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
