"""QA-Feedback (FineGrainedRLHF's long-form QA data): loaders, the split by question, policy prompts, labels.

Two file kinds (docs/method.md §3), read from a local path or an http(s) URL:

- prompt files: a JSON list of ``{question, passages, answer, text}``;
- feedback files: a JSON list of ``{question, passages, gold, "prediction 1".."prediction 4",
  feedback{errors[{error type, start, end}], missing-info, corrected-prediction}, preference[6]}``.

Passages come either as ``[title, sentence, sentence, ...]`` lists or as ``{wikipage|title, content|text}``
dicts (the shared files use one form each); both become :class:`Passage`. Every problem is reported with the
file, the record index and the question, so a broken record is quick to find.

The reward models read ``reward_prompt(question, passages)`` as their first sequence (the FineGrainedRLHF
"question: … context: wikipage: … text: …" layout). A chat policy reads ``format_prompt`` with passages cut so
the whole prompt fits a token budget; a seq2seq policy (the paper's T5) reads what FineGrainedRLHF's SFT model
was trained on: that same layout with every passage, cut at the token budget (:func:`paper_records`).
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alarm.data.qa import format_prompt
from alarm.errors import AlarmError
from alarm.io import decode_utf8
from alarm.text import sentence_spans, split_sentences, subsentence_spans

ERROR_TYPES = ("Irrelevant", "Redundant", "Incoherent", "Wrong-Grounding", "Unverifiable")
FACTUALITY_ERRORS = ("Wrong-Grounding", "Unverifiable")
RELEVANCE_ERRORS = ("Irrelevant", "Redundant", "Incoherent")
# preference[k] compares these predictions (1-based): 1 = first preferred, 2 = second, 0 = no preference
PREFERENCE_PAIRS = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))
DEFAULT_DIR = "../shared/data/qa_feedback"
PAPER_MAX_INPUT_TOKENS = 1024  # FineGrainedRLHF's env.max_input_len for its T5-large policy


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    """A question and the passages it is answered from: what the prompt shows (:func:`format_prompt`)."""

    question: str
    passages: tuple[Passage, ...]


@dataclass(frozen=True)
class PromptRecord(Question):
    answers: tuple[str, ...]


@dataclass(frozen=True)
class SpanError:
    type: str
    start: int
    end: int


@dataclass(frozen=True)
class FeedbackRecord(Question):
    gold: str
    predictions: tuple[str, str, str, str]
    errors: tuple[SpanError, ...]  # on predictions[0] ("prediction 1")
    missing_info: tuple[dict, ...]  # on predictions[0]
    corrected: str | None
    preference: tuple[int, ...]

    def pairs(self) -> list[tuple[int, int]]:
        """(preferred, other) 0-based prediction indices of the decisive preferences; ties are skipped."""
        out = []
        for (a, b), p in zip(PREFERENCE_PAIRS, self.preference):
            if p == 1:
                out.append((a - 1, b - 1))
            elif p == 2:
                out.append((b - 1, a - 1))
        return out


# ---------------------------------------------------------------------------------------------- reading


def read_json(source: str | Path, what: str) -> tuple[str, object]:
    """(display name, parsed JSON) of a local file or an http(s) URL."""
    name = str(source)
    try:
        if name.startswith(("http://", "https://")):
            with urllib.request.urlopen(name, timeout=120) as r:  # noqa: S310 (scheme checked above)
                raw = decode_utf8(r.read(), f"{what} {name}")
        else:
            raw = decode_utf8(Path(source).read_bytes(), f"{what} {name}")
    except OSError as e:
        raise AlarmError(f"cannot read {what} {name}: {getattr(e, 'strerror', None) or e}; give a path or an "
                         "http(s) URL") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AlarmError(f"{what} {name} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list) or not data:
        raise AlarmError(f"{what} {name} must be a non-empty JSON list of records")
    return name, data


def _where(name: str, i: int, rec) -> str:
    q = rec.get("question") if isinstance(rec, dict) else None
    return f"{name} record {i}" + (f" (question {q[:60]!r})" if isinstance(q, str) else "")


def _records(source: str | Path, what: str):
    """(where, record, question) for each record of a QA-Feedback JSON file; errors name the record."""
    name, data = read_json(source, what)
    for i, rec in enumerate(data):
        where = _where(name, i, rec)
        if not isinstance(rec, dict):
            raise AlarmError(f"{where}: each record must be a JSON object")
        yield where, rec, _str(rec, "question", where)


def _str(rec: dict, field: str, where: str, allow_empty: bool = False) -> str:
    if field not in rec:
        raise AlarmError(f"{where}: missing field {field!r}")
    v = rec[field]
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        raise AlarmError(f"{where}: field {field!r} must be a non-empty string")
    return v


def normalize_passage(p, where: str) -> Passage:
    """``[title, sentence, ...]`` or ``{wikipage|title, content|text}`` → Passage(title, text)."""
    if isinstance(p, list) and p and all(isinstance(s, str) for s in p):
        return Passage(p[0], " ".join(s.strip() for s in p[1:] if s.strip()))
    if isinstance(p, dict):
        title = p.get("wikipage", p.get("title", ""))
        text = p.get("content", p.get("text"))
        if isinstance(title, str) and isinstance(text, str):
            return Passage(title, text.strip())
    raise AlarmError(f"{where}: a passage must be [title, sentence, ...] or {{wikipage, content}}, got "
                     f"{str(p)[:60]!r}")


def _passages(rec: dict, where: str) -> tuple[Passage, ...]:
    ps = rec.get("passages")
    if not isinstance(ps, list):
        raise AlarmError(f"{where}: field 'passages' must be a list")
    return tuple(normalize_passage(p, f"{where}, passage {j}") for j, p in enumerate(ps))


def load_prompts(source: str | Path) -> list[PromptRecord]:
    """Validated prompt-file records."""
    out = []
    for where, rec, q in _records(source, "QA-Feedback prompt file"):
        answers = rec.get("answer", rec.get("answers"))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise AlarmError(f"{where}: field 'answer' must be a non-empty list of strings")
        out.append(PromptRecord(q, _passages(rec, where), tuple(answers)))
    return out


def load_feedback(source: str | Path) -> list[FeedbackRecord]:
    """Validated feedback-file records (spans checked against ``prediction 1``)."""
    out = []
    for where, rec, q in _records(source, "QA-Feedback feedback file"):
        preds = tuple(_str(rec, f"prediction {k}", where, allow_empty=True) for k in (1, 2, 3, 4))
        fb = rec.get("feedback")
        if not isinstance(fb, dict):
            raise AlarmError(f"{where}: missing field 'feedback' (an object with 'errors')")
        raw_errors = fb.get("errors", [])
        if not isinstance(raw_errors, list):
            raise AlarmError(f"{where}: feedback.errors must be a list")
        errors = []
        for j, e in enumerate(raw_errors):
            ew = f"{where}, feedback.errors[{j}]"
            if not isinstance(e, dict) or e.get("error type") not in ERROR_TYPES:
                raise AlarmError(f"{ew}: 'error type' must be one of {', '.join(ERROR_TYPES)}")
            s, t = e.get("start"), e.get("end")
            if not (isinstance(s, int) and isinstance(t, int) and 0 <= s < t <= len(preds[0])):
                raise AlarmError(f"{ew}: bad span start={s!r} end={t!r}; need 0 <= start < end <= "
                                 f"{len(preds[0])} (the length of 'prediction 1')")
            errors.append(SpanError(e["error type"], s, t))
        missing = fb.get("missing-info", [])
        if not isinstance(missing, list) or not all(isinstance(m, dict) for m in missing):
            raise AlarmError(f"{where}: feedback['missing-info'] must be a list of objects")
        pref = rec.get("preference")
        if not (isinstance(pref, list) and len(pref) == 6 and all(p in (0, 1, 2) for p in pref)):
            raise AlarmError(f"{where}: field 'preference' must be 6 values in {{0, 1, 2}} (pairs 1v2 1v3 1v4 2v3 "
                             f"2v4 3v4), got {pref!r}")
        corrected = fb.get("corrected-prediction")
        out.append(FeedbackRecord(q, _passages(rec, where), rec.get("gold") or "", preds, tuple(errors),
                                  tuple(missing), corrected if isinstance(corrected, str) else None, tuple(pref)))
    return out


# ---------------------------------------------------------------------------------------------- split


def split_questions(questions: Sequence[str], validation_fraction: float = 0.2, seed: int = 42) -> tuple[set, set]:
    """(train, validation) sets of questions. By question (never by response), independent of file order."""
    if not 0 < validation_fraction < 1:
        raise AlarmError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    unique = sorted(set(questions))
    random.Random(seed).shuffle(unique)
    n_val = max(1, round(len(unique) * validation_fraction))
    return set(unique[n_val:]), set(unique[:n_val])


def split_feedback(records: Sequence[FeedbackRecord], validation_fraction: float = 0.2,
                   seed: int = 42) -> tuple[list[FeedbackRecord], list[FeedbackRecord]]:
    """(train, validation) feedback records by question (:func:`split_questions`, the split PPO, VCB, reward
    models and benchmarks all use)."""
    train_q, val_q = split_questions([r.question for r in records], validation_fraction, seed)
    return [r for r in records if r.question in train_q], [r for r in records if r.question in val_q]


INCOMPLETE = ("Missing-Answer", "Missing-Major-Auxiliary")


def completeness_label(r: FeedbackRecord) -> int:
    """1 when the annotators marked no missing answer or major auxiliary information."""
    return int(not any(m.get("error type") in INCOMPLETE for m in r.missing_info))


# ---------------------------------------------------------------------------------------------- inputs


def reward_prompt(question: str, passages: Sequence[Passage | dict | str]) -> str:
    """The reward models' first sequence (FineGrainedRLHF layout, its prompt files' ``text`` field); the trainer,
    the rewards and the paper's seq2seq policy share it. Passages: Passage, ``{wikipage, content}`` or text."""
    parts = []
    for p in passages:
        if isinstance(p, dict):
            p = normalize_passage(p, "passage")
        parts.append(f"wikipage: {p.title} text: {p.text}" if isinstance(p, Passage) else f"text: {p}")
    return f"question: {question} context: " + " | ".join(parts)


def error_labels(completion: str, errors: Sequence[SpanError], types: Sequence[str], level: str = "sentence") -> list[int]:
    """1 per sentence (or sub-sentence) that overlaps an error span of one of ``types``, else 0.

    Pieces come from alarm.text, the same split the span reward uses at inference.
    """

    spans = sentence_spans(completion) if level == "sentence" else subsentence_spans(completion)
    bad = [(e.start, e.end) for e in errors if e.type in types]
    return [int(any(s < be and bs < e for bs, be in bad)) for s, e in spans]


def record_id(question: str) -> str:
    return "qaf-" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:10]


def fit_passages(tokenizer, question: str, passages: Sequence[str], max_prompt_tokens: int | None,
                 system: str | None = None) -> list[str]:
    """Cut every passage to one character budget, the largest for which the formatted prompt fits."""

    passages = list(passages)

    def n_tokens(ps):
        return len(tokenizer(format_prompt(tokenizer, question, ps, system), add_special_tokens=False)["input_ids"])

    if max_prompt_tokens is None or n_tokens(passages) <= max_prompt_tokens:
        return passages
    lo, hi = 0, max(len(p) for p in passages)
    while lo < hi:  # largest budget that fits
        mid = (lo + hi + 1) // 2
        if n_tokens([_cut(p, mid) for p in passages]) <= max_prompt_tokens:
            lo = mid
        else:
            hi = mid - 1
    if lo < 20:
        raise AlarmError(f"question {question[:60]!r}: max_prompt_tokens={max_prompt_tokens} leaves no room for "
                         "the passages; raise it")
    return [_cut(p, lo) for p in passages]


def _cut(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    cut = text[:n].rsplit(" ", 1)[0]
    return cut + " …"


def _two_or_more(passages: Sequence[Passage]) -> list[str]:
    """Passage texts, with a lone passage split in two at a sentence boundary (the QA JSONL needs 2-4)."""
    texts = [p.text for p in passages if p.text.strip()][:4]
    if len(texts) == 1:

        sents = split_sentences(texts[0])
        if len(sents) >= 2:
            half = len(sents) // 2
            texts = [" ".join(sents[:half]).strip(), " ".join(sents[half:]).strip()]
    return texts


def policy_records(records: Sequence[PromptRecord | FeedbackRecord], tokenizer, max_prompt_tokens: int | None = 384,
                   system: str | None = None) -> list[dict]:
    """Policy prompt records ``{"id", "prompt", "question", "passages", "reference"}`` (chat-formatted).

    ``passages`` holds the cut texts the policy saw; rewards build their own input from question + passages.
    """

    out = []
    for r in records:
        texts = fit_passages(tokenizer, r.question, [p.text for p in r.passages if p.text.strip()],
                             max_prompt_tokens, system)
        reference = r.answers[0] if isinstance(r, PromptRecord) else r.gold
        out.append({"id": record_id(r.question), "prompt": format_prompt(tokenizer, r.question, texts, system),
                    "question": r.question, "passages": texts, "reference": reference})
    return out


def fit_paper_passages(tokenizer, question: str, passages: Sequence[Passage], max_tokens: int) -> list[Passage]:
    """The passages, in order, as far as ``reward_prompt(question, passages)`` fits ``max_tokens`` (special tokens
    included): the first that does not fit is cut between words, the rest dropped. FineGrainedRLHF cut its T5
    input at 1024 tokens the same way (at the end), so the policy sees what its SFT checkpoint was trained on and
    the passages column holds exactly what it read."""
    def fits(ps) -> bool:
        return len(tokenizer(reward_prompt(question, ps))["input_ids"]) <= max_tokens

    kept = list(passages)
    if fits(kept):
        return kept
    if not fits([]):
        raise AlarmError(f"question {question[:60]!r}: max_prompt_tokens={max_tokens} leaves no room for the "
                         "question itself; raise it")
    k = 0
    while fits(kept[: k + 1]):
        k += 1
    title, text = kept[k].title, kept[k].text
    cuts = [j for j, ch in enumerate(text) if ch.isspace()]
    lo, hi = -1, len(cuts) - 1  # the longest head of passage k that fits: cuts[lo] (-1: none)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits([*kept[:k], Passage(title, text[: cuts[mid]])]):
            lo = mid
        else:
            hi = mid - 1
    return kept[:k] + ([Passage(title, text[: cuts[lo]])] if lo >= 0 else [])


def paper_records(records: Sequence[PromptRecord | FeedbackRecord], tokenizer, seq2seq: bool,
                  max_prompt_tokens: int | None = PAPER_MAX_INPUT_TOKENS, system: str | None = None) -> list[dict]:
    """Policy records ``{"id", "prompt", "question", "passages", "reference"}`` with every passage of a record.

    Seq2seq (the paper's T5): the prompt is ``reward_prompt`` — "question: … context: wikipage: … text: … |
    wikipage: …", no chat template, no instruction — cut at ``max_prompt_tokens`` (None: FineGrainedRLHF's 1024).
    Causal: the chat prompt of :func:`policy_records`, with all the passages fitted to the budget. ``passages``
    holds what the policy read, as ``{wikipage, content}``, so a reward with ``prompt_with_passages`` (the
    holistic one: UltraRM's instruction was the whole policy input) rebuilds exactly that input. ``evidence``
    holds every passage uncut: what the QA-Feedback annotators saw and what our reward models are trained and
    cross-validated on (``evidence_model`` rewards read this column by default), so the reward the policy gets
    is the one whose quality was measured.
    """

    budget = PAPER_MAX_INPUT_TOKENS if max_prompt_tokens is None else max_prompt_tokens
    out = []
    for r in records:
        passages = [p for p in r.passages if p.text.strip()]
        if seq2seq:
            kept = fit_paper_passages(tokenizer, r.question, passages, budget)
            prompt = reward_prompt(r.question, kept)
        else:
            texts = fit_passages(tokenizer, r.question, [p.text for p in passages], budget, system) if passages else []
            kept = [Passage(p.title, t) for p, t in zip(passages, texts)]
            prompt = format_prompt(tokenizer, r.question, texts, system)
        reference = r.answers[0] if isinstance(r, PromptRecord) else r.gold
        out.append({"id": record_id(r.question), "prompt": prompt, "question": r.question,
                    "passages": [{"wikipage": p.title, "content": p.text} for p in kept],
                    "evidence": [{"wikipage": p.title, "content": p.text} for p in passages], "reference": reference})
    return out


def load_split(source: str, split: str, validation_fraction: float = 0.2, seed: int = 42) -> list[PromptRecord]:
    """One split of QA-Feedback prompts: ``source`` with ``{split}`` in it names one file per split
    (FineGrainedRLHF's ``train.json`` / ``dev.json`` / ``test.json``); one file is split by question, 80/20."""
    if "{split}" in source:
        return load_prompts(source.replace("{split}", split))
    records = load_prompts(source)
    train, held_out = split_questions([r.question for r in records], validation_fraction, seed)
    if split not in ("train", "test", "dev", "validation"):
        raise AlarmError(f"QA-Feedback split {split!r}: one prompt file splits into 'train' and 'test'; name the "
                         "splits so, or give a path with {split} in it (one file per split)")
    keep = train if split == "train" else held_out
    return [r for r in records if r.question in keep]


class PassagePrompt:
    """Wrap a reward model so it reads ``reward_prompt(question, passages)`` as its prompt.

    alarm's PPO trainer passes the question as the prompt and the passages as a column; the QA-Feedback reward
    models were trained on question + passages, so this rebuilds that input from the columns.
    """

    def __init__(self, reward):
        self.reward = reward
        self.name = getattr(reward, "name", "reward")
        self.dense = getattr(reward, "dense", False)
        self.higher_is_better = getattr(reward, "higher_is_better", True)

    def __call__(self, prompts, completions, passages=None, **columns):
        if passages is None:
            raise AlarmError(f"reward {self.name!r} needs a 'passages' column (the QA-Feedback reward models read "
                             "the question with its passages)")
        full = [reward_prompt(q, ps) for q, ps in zip(prompts, passages)]
        return self.reward(full, completions, passages=passages, **columns)

    @property
    def last_stats(self) -> dict:
        return getattr(self.reward, "last_stats", {})
