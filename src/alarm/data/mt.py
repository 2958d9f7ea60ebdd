"""Spanish→English translation data and the prompt a translation policy sees (docs/method.md §3, MT).

Sources of pairs:

- **Europarl en-es** through ``datasets`` (needs network or a local ``datasets`` cache). The paper's split:
  the first 100 000 pairs, 70/30 train/test with seed 42, then 90/10 train/validation of the train part —
  :func:`paper_split` does exactly that with ``Dataset.train_test_split``.
- **A parallel file** given by path:

  - JSONL, one object per line, either ``{"source": "...", "target": "..."}``, ``{"es": "...", "en": "..."}``
    or Europarl's ``{"translation": {"es": "...", "en": "..."}}``; an optional ``"split"``
    (``train``/``validation``/``test``) pins the record to a split, an optional ``"id"`` is kept.
  - TSV, ``source<TAB>target`` per line; a first line ``source<TAB>target`` or ``es<TAB>en`` is a header.

  Every problem names the file and line. A file without ``split`` fields is split like Europarl.

Prompts: a seq2seq policy (T5 / mT5, the paper's) reads ``"translate Spanish to English: <source>"``;
a causal chat policy gets the same instruction through its chat template (plain text without one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alarm.data.qa import jsonl_lines
from alarm.errors import AlarmError

EUROPARL = "Helsinki-NLP/europarl"
EUROPARL_CONFIG = "en-es"
PAPER_PAIRS = 100_000
PAPER_TEST_FRACTION = 0.3
PAPER_VALID_FRACTION = 0.1
PAPER_SEED = 42
SPLITS = ("train", "validation", "test")

LANGUAGE_NAMES = {"es": "Spanish", "en": "English", "de": "German", "fr": "French", "it": "Italian",
                  "pt": "Portuguese"}


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    id: str | None = None
    split: str | None = None


# ----------------------------------------------------------------------------------------------- parsing


def _nonempty(x) -> bool:
    return isinstance(x, str) and x.strip() != ""


def _pair_from_json(obj, src: str, tgt: str) -> tuple[str, str] | str:
    """(source, target) of one parsed JSONL line, or what is wrong with it."""
    if not isinstance(obj, dict):
        return "each line must be a JSON object"
    if "translation" in obj:
        tr = obj["translation"]
        if not isinstance(tr, dict):
            return "field 'translation' must be an object like {\"es\": ..., \"en\": ...}"
        obj = {**obj, **tr}
    for s_key, t_key in (("source", "target"), (src, tgt)):
        if s_key in obj or t_key in obj:
            for key in (s_key, t_key):
                if key not in obj:
                    return f"missing field '{key}'"
                if not _nonempty(obj[key]):
                    return f"field '{key}' must be a non-empty string"
            return obj[s_key].strip(), obj[t_key].strip()
    return f"no translation pair: give 'source' and 'target' (or '{src}' and '{tgt}')"


def load_pairs(path: str | Path, source_lang: str = "es", target_lang: str = "en") -> list[Pair]:
    """Read and validate a parallel JSONL or TSV file (by extension: ``.tsv`` is TSV, anything else JSONL)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise AlarmError(f"cannot read translation pairs {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise AlarmError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    pairs = _parse_tsv(path, text, source_lang, target_lang) if path.suffix.lower() == ".tsv" \
        else _parse_jsonl(path, text, source_lang, target_lang)
    if not pairs:
        raise AlarmError(f"{path}: no translation pairs found")
    return pairs


def _parse_jsonl(path: Path, text: str, src: str, tgt: str) -> list[Pair]:
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    for lineno, obj in jsonl_lines(str(path), text):
        got = _pair_from_json(obj, src, tgt)
        if isinstance(got, str):
            raise AlarmError(f"{path} line {lineno}: {got}")
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            raise AlarmError(f"{path} line {lineno}: field 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
        rid = obj.get("id")
        if rid is not None:
            rid = str(rid)
            if rid in seen:
                raise AlarmError(f"{path} line {lineno}: duplicate id {rid!r} (first on line {seen[rid]})")
            seen[rid] = lineno
        pairs.append(Pair(got[0], got[1], rid, split))
    return pairs


def _parse_tsv(path: Path, text: str, src: str, tgt: str) -> list[Pair]:
    pairs: list[Pair] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise AlarmError(
                f"{path} line {lineno}: expected 2 tab-separated columns (source, target), found {len(cols)}"
            )
        if lineno == 1 and [c.strip().lower() for c in cols] in (["source", "target"], [src, tgt]):
            continue  # header
        if not (_nonempty(cols[0]) and _nonempty(cols[1])):
            raise AlarmError(f"{path} line {lineno}: source and target must both be non-empty")
        pairs.append(Pair(cols[0].strip(), cols[1].strip()))
    return pairs


# ----------------------------------------------------------------------------------------------- splits


def paper_split(dataset, n_pairs: int | None = PAPER_PAIRS, test_fraction: float = PAPER_TEST_FRACTION,
                valid_fraction: float = PAPER_VALID_FRACTION, seed: int = PAPER_SEED) -> dict:
    """The paper's split of a ``datasets.Dataset``: first ``n_pairs`` rows, 70/30 train/test, then 90/10 of train.

    Returns ``{"train", "validation", "test"}`` datasets. Sizes follow ``train_test_split`` (test sizes round up).
    """
    if n_pairs is not None:
        dataset = dataset.select(range(min(n_pairs, len(dataset))))
    if len(dataset) < 3:
        raise AlarmError(f"need at least 3 pairs to split into train/validation/test, got {len(dataset)}")
    first = dataset.train_test_split(test_size=test_fraction, seed=seed)
    second = first["train"].train_test_split(test_size=valid_fraction, seed=seed)
    return {"train": second["train"], "validation": second["test"], "test": first["test"]}


def split_pairs(pairs: list[Pair], n_pairs: int | None = PAPER_PAIRS, test_fraction: float = PAPER_TEST_FRACTION,
                valid_fraction: float = PAPER_VALID_FRACTION, seed: int = PAPER_SEED) -> dict[str, list[Pair]]:
    """Split pairs: by their ``split`` fields when every pair has one, else with :func:`paper_split`."""
    if pairs and all(p.split for p in pairs):
        return {s: [p for p in pairs if p.split == s] for s in SPLITS}
    if any(p.split for p in pairs):
        raise AlarmError("some pairs have a 'split' field and some do not; give it on every line or on none")
    from datasets import Dataset

    ds = Dataset.from_dict({"i": list(range(len(pairs)))})
    parts = paper_split(ds, n_pairs, test_fraction, valid_fraction, seed)
    return {s: [pairs[i] for i in parts[s]["i"]] for s in SPLITS}


def load_europarl(n_pairs: int | None = PAPER_PAIRS, source_lang: str = "es", target_lang: str = "en",
                  name: str = EUROPARL, config: str = EUROPARL_CONFIG, seed: int = PAPER_SEED,
                  test_fraction: float = PAPER_TEST_FRACTION,
                  valid_fraction: float = PAPER_VALID_FRACTION, setting: str = "data.path") -> dict[str, list[Pair]]:
    """Europarl through ``datasets`` with the paper's split (needs network or a local ``datasets`` cache).

    ``setting``: the name of the setting that chose Europarl, for the hint (``data.path`` in a recipe, ``data`` in
    `alarm sft`)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split="train")
    except Exception as e:  # no network, unknown config, hub errors: all user-fixable
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AlarmError(
            f"cannot load {name} ({config}) through datasets: {reason}. Without network, give a parallel "
            f"JSONL/TSV file instead ({setting}=pairs.jsonl)"
        ) from None
    if "translation" not in ds.column_names:
        raise AlarmError(f"{name} ({config}) has no 'translation' column (columns: {ds.column_names})")
    parts = paper_split(ds, n_pairs, test_fraction, valid_fraction, seed)
    out = {}
    for split, part in parts.items():
        pairs = []
        for k, row in enumerate(part["translation"]):
            s, t = row.get(source_lang), row.get(target_lang)
            if _nonempty(s) and _nonempty(t):  # Europarl has some empty sides; skip them
                pairs.append(Pair(s.strip(), t.strip(), f"europarl-{split}-{k}", split))
        out[split] = pairs
    return out


def load_splits(path: str | None, source_lang: str = "es", target_lang: str = "en", n_pairs: int | None = None,
                seed: int = PAPER_SEED, setting: str = "data.path") -> dict[str, list[Pair]]:
    """``{"train", "validation", "test"}`` pairs from ``path`` (a file, or ``"europarl"``: the paper's data)."""
    if path is None or str(path).lower() == "europarl":
        return load_europarl(PAPER_PAIRS if n_pairs is None else n_pairs, source_lang, target_lang, seed=seed,
                             setting=setting)
    return split_pairs(load_pairs(path, source_lang, target_lang), n_pairs, seed=seed)


# ----------------------------------------------------------------------------------------------- prompts


def instruction(source: str, source_lang: str = "es", target_lang: str = "en") -> str:
    """The plain-text task: what a reward model (e.g. UltraRM) is shown as the prompt."""
    s, t = LANGUAGE_NAMES.get(source_lang, source_lang), LANGUAGE_NAMES.get(target_lang, target_lang)
    return f"Translate the following {s} text into {t}. Reply with the translation only.\n\n{source}"


def format_mt_prompt(tokenizer, source: str, seq2seq: bool, source_lang: str = "es",
                     target_lang: str = "en") -> str:
    """The policy's input text for one source sentence.

    Seq2seq: T5's task-prefix style ``"translate Spanish to English: <source>"`` (the tokenizer adds EOS).
    Causal: the instruction through the chat template (the generation prompt opens the assistant turn), or
    ``"<instruction>\\n\\nEnglish:"`` for a model without one.
    """
    s, t = LANGUAGE_NAMES.get(source_lang, source_lang), LANGUAGE_NAMES.get(target_lang, target_lang)
    if seq2seq:
        return f"translate {s} to {t}: {source}"
    text = instruction(source, source_lang, target_lang)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{text}\n\n{t}:"


def prompt_records(pairs: list[Pair], tokenizer, seq2seq: bool, source_lang: str = "es",
                   target_lang: str = "en") -> list[dict]:
    """PPO prompt records: ``id``, ``prompt`` (policy input), ``question`` (the plain instruction rewards see),
    ``source`` and ``reference`` (for reference-based rewards).

    The instruction is the policy's input as plain text, as the paper showed UltraRM: for a seq2seq policy
    ``"translate Spanish to English: <source>"`` itself, for a chat policy the user turn (:func:`instruction`).
    """
    out = []
    for i, p in enumerate(pairs):
        prompt = format_mt_prompt(tokenizer, p.source, seq2seq, source_lang, target_lang)
        out.append({"id": p.id or f"pair-{i}", "prompt": prompt,
                    "question": prompt if seq2seq else instruction(p.source, source_lang, target_lang),
                    "source": p.source, "reference": p.target})
    return out


__all__ = [
    "EUROPARL", "PAPER_PAIRS", "Pair", "format_mt_prompt", "instruction", "load_europarl", "load_pairs",
    "load_splits", "paper_split", "prompt_records", "split_pairs",
]
