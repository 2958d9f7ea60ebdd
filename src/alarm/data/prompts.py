"""Prompt records per task, and what a reward receives from a record: the one place both are built.

A prompt record is ``{"id", "prompt", "question", ...columns}``: ``prompt`` is the policy's input (chat template,
passages, the paper's seq2seq formats); ``question`` is the plain request rewards are given as their prompt;
the other columns (passages, reference, source, …) are what rewards read. PPO, VCB, `alarm generate`, the
benchmarks and the run's evaluation all build records here, so one recipe gives every command the same inputs
and the same train/held-out split.
"""

from __future__ import annotations

from collections.abc import Sequence

from alarm.data import hh, mt, qa_feedback, tldr
from alarm.data.qa import format_prompt, load_qa_jsonl, split_records
from alarm.errors import AlarmError

NOT_COLUMNS = ("id", "prompt", "split", "prompt_id", "sample", "completion", "candidate", "candidate_index",
               "scores", "reward")


def prompt_records(data, tokenizer, split: str, seq2seq: bool = False) -> list[dict]:
    """The records of one split of a recipe's ``data`` section (:class:`alarm.config.DataSpec`).

    - ``qa``: a QA JSONL with its own train/test split (None: the packaged quickstart set);
    - ``qa_feedback``: QA-Feedback prompt files — one file per split (``{split}`` in the path) or one file
      split by question (:func:`alarm.data.qa_feedback.split_questions` with ``data.split_seed``, whatever the run's seed), the paper's inputs;
    - ``mt``: parallel pairs (a JSONL/TSV file or Europarl), the paper's 70/30 then 90/10 split;
    - ``hh`` / ``tldr``: the VCB paper's tasks — Anthropic HH dialogues and TL;DR posts from a hub id, a local
      JSONL or (None) the packaged offline stand-in (:mod:`alarm.data.hh`, :mod:`alarm.data.tldr`). A hub split
      is read in an order shuffled with ``data.split_seed`` (a file without 'split' fields is split 90/10 with
      it); the train split stops at ``data.max_train_prompts`` before
      prompts are built (the hub sets hold 160k / 117k rows).
    """
    if data.task in ("hh", "tldr"):
        module = hh if data.task == "hh" else tldr
        limit = data.max_train_prompts if split == data.train_split else None
        items = module.load_split(data.path, split, seed=data.split_seed, limit=limit)
        return module.prompt_records(items, tokenizer, seq2seq, data.system_prompt, data.max_prompt_tokens)
    if data.task == "mt":

        splits = mt.load_splits(data.path)
        if split not in splits:
            raise AlarmError(f"the MT data has no split {split!r} (has {', '.join(splits)}); check data.*_split")
        return mt.prompt_records(splits[split], tokenizer, seq2seq=seq2seq)
    if data.task == "qa_feedback":

        if data.path is None:
            raise AlarmError("data.task qa_feedback needs data.path: a QA-Feedback prompt file or URL")
        records = qa_feedback.load_split(data.path, split, seed=data.split_seed)
        return qa_feedback.paper_records(records, tokenizer, seq2seq, data.max_prompt_tokens, data.system_prompt)

    return qa_prompt_records(data.path, tokenizer, split, data.system_prompt)


def qa_prompt_records(path: str | None, tokenizer, split: str, system_prompt: str | None = None) -> list[dict]:
    """The records of one split of a QA JSONL (None: the packaged quickstart set), prompts built with the
    tokenizer's chat template."""
    if path is not None and str(path).endswith(".json"):
        raise AlarmError(f"{path} looks like a QA-Feedback prompt file; set data.task: qa_feedback")
    records = split_records(load_qa_jsonl(path), split)
    if not records:
        raise AlarmError(f"the data has no records in split {split!r}; check data.path and the split names")
    return [{"id": r.id, "prompt": format_prompt(tokenizer, r.question, r.passages, system_prompt),
             "question": r.question, "passages": list(r.passages), "reference": r.reference} for r in records]


def reward_inputs(records: Sequence[dict]) -> tuple[list[str], dict[str, list]]:
    """``(prompts, columns)`` a reward receives for these records: the plain ``question`` (the policy's input
    when a record has none) as the prompt, and every column but the bookkeeping ones and stored ``raw_*`` scores
    (``question`` included),
    one entry per record."""
    prompts = [r["question"] if "question" in r else r["prompt"] for r in records]
    keys = sorted(k for k in {k for r in records for k in r} - set(NOT_COLUMNS) if not k.startswith("raw_"))
    return prompts, {k: [r.get(k) for r in records] for k in keys}
