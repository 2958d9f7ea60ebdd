"""`alarm qa-feedback prepare`: QA-Feedback prompts → the QA JSONL the recipes read (one split by question)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alarm.data.qa_feedback import (
    DEFAULT_DIR,
    _two_or_more,
    fit_passages,
    load_prompts,
    record_id,
    split_questions,
)
from alarm.io import write_jsonl_atomic
from alarm.models import load_tokenizer, resolve_model_path
from alarm.outputs import check_output_file


def prepare(prompts_source: str, out: str | Path, tokenizer_name: str | None = "smollm2-135m-instruct",
            max_prompt_tokens: int | None = 384, validation_fraction: float = 0.2, seed: int = 42,
            system: str | None = None) -> dict:
    """Write a QA JSONL (alarm.data.qa format) from a QA-Feedback prompt file: train/test by question.

    Passages are cut so the policy prompt fits ``max_prompt_tokens`` of ``tokenizer_name``; a lone passage is
    split in two (the QA JSONL needs 2-4 passages); questions without any passage are dropped.
    """

    records = load_prompts(prompts_source)
    _, val = split_questions([r.question for r in records], validation_fraction, seed)
    tokenizer = load_tokenizer(resolve_model_path(tokenizer_name))
    rows, dropped = [], 0
    for r in records:
        texts = _two_or_more(r.passages)
        if len(texts) < 2:
            dropped += 1
            continue
        texts = fit_passages(tokenizer, r.question, texts, max_prompt_tokens, system)
        rows.append({"id": record_id(r.question), "split": "test" if r.question in val else "train",
                     "question": r.question, "passages": texts, "reference": r.answers[0]})
    out = write_jsonl_atomic(out, rows)
    summary = {"out": str(out), "train": sum(x["split"] == "train" for x in rows),
               "test": sum(x["split"] == "test" for x in rows), "dropped_without_passages": dropped}
    return summary


def cmd_prepare(args) -> int:
    check_output_file(args.out, "--out")
    s = prepare(args.prompts, args.out, args.tokenizer, args.max_prompt_tokens, args.validation_fraction, args.seed)
    print(f"wrote {s['out']}: {s['train']} train / {s['test']} test questions "
          f"({s['dropped_without_passages']} without passages dropped)")
    return 0


def add_commands(subparsers) -> None:
    """``alarm qa-feedback prepare``: QA-Feedback prompts → the QA JSONL the recipes read."""
    p = subparsers.add_parser("qa-feedback", help="QA-Feedback data tools", description="QA-Feedback data tools")
    sub = p.add_subparsers(dest="qa_feedback_command", required=True, metavar="ACTION")
    q = sub.add_parser("prepare", help="convert a prompt file into the QA JSONL of the recipes",
                       description=prepare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--prompts", default=f"{DEFAULT_DIR}/prompts.json", help="prompt file path or http(s) URL")
    q.add_argument("--out", default="runs/qa_feedback/data.jsonl", help="the QA JSONL to write")
    q.add_argument("--tokenizer", default="smollm2-135m-instruct", help="policy tokenizer used for the budget")
    q.add_argument("--max-prompt-tokens", type=int, default=384, help="cut the passages so the prompt fits this")
    q.add_argument("--validation-fraction", type=float, default=0.2, help="share of the questions in the test split")
    q.add_argument("--seed", type=int, default=42, help="seed of the split by question")
    q.set_defaults(handler=cmd_prepare)
