"""The `alarm` command. Each subcommand's arguments and handler live beside the code they drive.

Errors a user can cause are printed as one line (``alarm: error: …``) with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from alarm.errors import AlarmError


def build_parser() -> argparse.ArgumentParser:
    from alarm import pipeline, qa_feedback, sft, vcb_commands
    from alarm.evaluation import commands as evaluation
    from alarm.reward_models import train as rm_train

    parser = argparse.ArgumentParser(prog="alarm", description="Align language models with hierarchical rewards.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pipeline.add_commands(sub)
    evaluation.add_commands(sub)
    sft.add_commands(sub)
    vcb_commands.add_commands(sub)
    rm_train.add_commands(sub)
    qa_feedback.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except AlarmError as e:
        print(f"alarm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alarm: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
