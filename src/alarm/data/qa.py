"""QA records for the quickstart task, and the prompt a policy sees.

JSONL schema: one JSON object per line (blank lines are skipped, extra keys are ignored):

    {"id": "qs-001",                      # str, unique in the file
     "split": "train",                    # "train" or "test"
     "question": "What is ...?",          # non-empty str
     "passages": ["...", "..."],          # 2-4 non-empty strings: evidence plus distractors
     "reference": "A full sentence."}     # non-empty str, a short reference answer

The packaged ``alarm/data/quickstart.jsonl`` (96 hand-written questions, 48 train / 48 test) follows it, so the
quickstart runs with no network and no downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jinja2 import TemplateError

from alarm.errors import AlarmError
from alarm.io import decode_utf8, jsonl_lines

SPLITS = ("train", "test")
MIN_PASSAGES, MAX_PASSAGES = 2, 4

DEFAULT_SYSTEM = (
    "You answer questions using the given passages. Some passages may be off-topic; ignore them. "
    "Answer in 1-3 complete sentences."
)


@dataclass(frozen=True)
class QARecord:
    id: str
    split: str
    question: str
    passages: list[str]
    reference: str


def _nonempty_str(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _check(obj) -> str | None:
    """Return what is wrong with one parsed line, or None."""
    if not isinstance(obj, dict):
        return "each line must be a JSON object"
    for field in ("id", "split", "question", "passages", "reference"):
        if field not in obj:
            return f"missing field '{field}'"
    for field in ("id", "question", "reference"):
        if not _nonempty_str(obj[field]):
            return f"field '{field}' must be a non-empty string"
    if obj.get("split") not in SPLITS:
        return f"field 'split' must be one of {', '.join(repr(s) for s in SPLITS)}"
    passages = obj.get("passages")
    if not (
        isinstance(passages, list)
        and MIN_PASSAGES <= len(passages) <= MAX_PASSAGES
        and all(_nonempty_str(p) for p in passages)
    ):
        return f"field 'passages' must be a list of {MIN_PASSAGES}-{MAX_PASSAGES} strings"
    return None


def load_qa_jsonl(path: str | Path | None = None) -> list[QARecord]:
    """Read and validate a QA JSONL file; None means the packaged quickstart set.

    Errors name the file and line so a hand-edited data set is quick to fix.
    """
    if path is None:
        source = resources.files("alarm") / "data" / "quickstart.jsonl"
        name, text = "quickstart.jsonl", source.read_text(encoding="utf-8")
    else:
        path = Path(path)
        name = str(path)
        try:
            text = decode_utf8(path.read_bytes(), f"QA data {path}")
        except OSError as exc:
            raise AlarmError(f"cannot read QA data {path}: {exc.strerror or exc}") from exc

    records: list[QARecord] = []
    seen: dict[str, int] = {}
    for lineno, obj in jsonl_lines(name, text):
        problem = _check(obj)
        if problem:
            raise AlarmError(f"{name} line {lineno}: {problem}")
        if obj["id"] in seen:
            raise AlarmError(
                f"{name} line {lineno}: duplicate id '{obj['id']}' (first on line {seen[obj['id']]})"
            )
        seen[obj["id"]] = lineno
        records.append(
            QARecord(obj["id"], obj["split"], obj["question"], list(obj["passages"]), obj["reference"])
        )
    if not records:
        raise AlarmError(f"{name}: no records")
    return records


def split_records(records: list[QARecord], split: str) -> list[QARecord]:
    """The records of one split ("train" or "test"), in file order."""
    if split not in SPLITS:
        raise AlarmError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    return [r for r in records if r.split == split]


def format_prompt(tokenizer, question: str, passages: list[str], system: str | None = None) -> str:
    """The policy's input text: the chat template when the tokenizer has one, else a plain prompt.

    The instruction (answer in 1-3 sentences from the passages) is the same either way, so rewards see
    comparable answers from chat and base models.
    """
    system = DEFAULT_SYSTEM if system is None else system
    numbered = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
    user = f"Passages:\n{numbered}\n\nQuestion: {question}"
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError:
            # some templates (e.g. Gemma's) reject a system turn: fold it into the user turn
            messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\nQuestion: {question}\nPassages:\n{numbered}\nAnswer:"
