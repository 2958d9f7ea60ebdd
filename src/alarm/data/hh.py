"""Anthropic HH dialogue data (the VCB paper's assistant task) and the prompt a dialogue policy sees.

Sources (``data.path`` of a ``data.task: hh`` recipe):

- **The hub set** ``Anthropic/hh-rlhf`` through ``datasets`` (needs a network or a local ``datasets`` cache);
  ``Anthropic/hh-rlhf/helpful-base`` (a third path part) reads one subset (``data_dir`` of ``load_dataset``).
  Its splits are ``train`` and ``test``. Its rows are ordered by subset, so a split is read in an order shuffled
  with ``data.split_seed``: the first N held-out prompts are a fair sample and ``data.max_train_prompts`` draws a
  seeded subset before any prompt is built.
- **A local directory** ``datasets`` reads (a clone of the hub repository: ``{subset}/{split}.jsonl.gz``), the
  same way.
- **A local file**: JSONL (``.jsonl``, or ``.jsonl.gz`` as the hub's raw files) or a JSON list, one record
  ``{"chosen": "...", "rejected": "..."}`` per line with the hub's transcripts; an optional ``"id"`` is kept and
  an optional ``"split"`` pins the record to a split (every line or none; without it the file is split 90/10
  into ``train``/``test`` with ``data.split_seed``). ``{split}`` in the path reads one file per split
  (``hh/{split}.jsonl.gz``).
- **None**: the packaged offline stand-in ``alarm/data/hh_offline.jsonl`` — dialogues in the same format made by
  the seeded template generator :func:`generate_offline` (200 train, 120 test), for machines without a network.

A transcript is ``"\\n\\nHuman: …\\n\\nAssistant: …"`` turns. The prompt is the dialogue up to its last
``Assistant:`` turn; the chosen transcript's final reply is the ``reference`` (the rejected one's, when both
share the dialogue, is ``rejected``). Consecutive turns of one speaker are merged (some HH transcripts have
them); a dialogue whose chosen final reply is empty is skipped with a warning. Every problem names the file (or
hub split) and the line (or row).

Prompts: a chat policy reads the turns as user/assistant messages through its chat template (the generation
prompt opens the next assistant turn); a model without a template, or a seq2seq one, reads the HH transcript
itself, ending ``"\\n\\nAssistant:"``. Rewards get that transcript as their prompt (``question``: what a reward
model trained on HH reads as its first sequence) and the last Human turn as ``last_turn``. With
``data.max_prompt_tokens`` the earliest exchanges are dropped until the policy prompt fits.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jinja2 import TemplateError

from alarm.errors import AlarmError
from alarm.io import jsonl_lines, write_jsonl_atomic

HUB_ID = "Anthropic/hh-rlhf"
OFFLINE_FILE = "hh_offline.jsonl"
TEST_FRACTION = 0.1  # a local file without 'split' fields: this share is held out (seeded)
ROLES = {"Human": "user", "Assistant": "assistant"}
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]*")


# ----------------------------------------------------------------------------- rows: a local file or the hub
# (shared with alarm.data.tldr)


@dataclass(frozen=True)
class SourceRow:
    id: str
    where: str  # for messages: "hh.jsonl line 3", "Anthropic/hh-rlhf (train) row 12"
    fields: dict


def is_local(path: str) -> bool:
    """A local file (by its suffix, ``{split}`` or existence) rather than a hub id or a data set directory."""
    p = str(path)
    return ("{split}" in p or p.lower().endswith((".jsonl", ".json", ".gz"))
            or Path(p).expanduser().is_file())


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _read_text(path: Path, what: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AlarmError(f"cannot read {what} {path}: {e.strerror or e}; check data.path") from None
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise AlarmError(f"{path}: not a readable gzip file ({_first_line(e)}); give a .jsonl or .jsonl.gz") \
                from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AlarmError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None


def _is_json_list(name: str) -> bool:
    return name.lower().endswith(".json")


def _objects(name: str, text: str):
    """(line, object) of a JSONL file, or (index, object) of a ``.json`` file's JSON list."""
    if not _is_json_list(name):
        yield from jsonl_lines(name, text)
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise AlarmError(f"{name}: invalid JSON ({e.msg} at line {e.lineno}); give a JSON list of records") from None
    if not isinstance(items, list):
        raise AlarmError(f"{name}: a .json file must hold a list of records (or use JSONL: one record a line)")
    yield from enumerate(items)


def local_rows(name: str, text: str, split: str, seed: int, prefix: str, hint: str, pinned: bool = False,
               check: Callable[[SourceRow], object] | None = None) -> list[SourceRow]:
    """The rows of one split of a local file's text. ``pinned``: the file is that split already ({split});
    ``check``: called on every row of the file before the split is taken (a malformed record is an error
    whichever split it falls in)."""
    rows: list[tuple[SourceRow, object]] = []
    seen: dict[str, str] = {}
    unit = "item" if _is_json_list(name) else "line"
    for n, obj in _objects(name, text):
        where = f"{name} {unit} {n}"
        if not isinstance(obj, dict):
            raise AlarmError(f"{where}: each record must be a JSON object; {hint}")
        rid = obj.get("id")
        if rid is None:
            rid = f"{prefix}-{n}"
        elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise AlarmError(f"{where}: field 'id' must be a string or an integer")
        rid = str(rid)
        if rid in seen:
            raise AlarmError(f"{where}: duplicate id {rid!r} (first at {seen[rid]})")
        seen[rid] = f"{unit} {n}"
        rows.append((SourceRow(rid, where, obj), obj.get("split")))
        if check is not None:
            check(rows[-1][0])
    if not rows:
        raise AlarmError(f"{name}: no records; {hint}")
    if pinned:
        return [r for r, _ in rows]
    marks = [s for _, s in rows]
    if all(s is not None for s in marks):
        bad = next(((r, s) for r, s in rows if not isinstance(s, str)), None)
        if bad is not None:
            raise AlarmError(f"{bad[0].where}: field 'split' must be a string like 'train' or 'test'")
        keep = [r for r, s in rows if s == split]
        if not keep:
            have = ", ".join(sorted(set(marks)))
            raise AlarmError(f"{name} has no records in split {split!r} (its splits: {have}); "
                             "set data.train_split / data.test_split")
        return keep
    if any(s is not None for s in marks):
        raise AlarmError(f"{name}: some records have a 'split' field and some do not; give it on every line "
                         "or on none")
    if split not in ("train", "test"):
        raise AlarmError(f"{name} has no 'split' fields, so it is split 90/10 into 'train' and 'test' with "
                         f"data.split_seed; split {split!r} does not exist (set data.train_split: train, data.test_split: test)")
    if len(rows) < 2:
        raise AlarmError(f"{name}: one record cannot be split into train and test; add records or 'split' fields")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(rows) * TEST_FRACTION))
    chosen = set(order[:n_test]) if split == "test" else set(order[n_test:])
    return [r for i, (r, _) in enumerate(rows) if i in chosen]


def hub_rows(path: str, split: str, seed: int, limit: int | None, prefix: str, offline_hint: str) -> list[SourceRow]:
    """One split of a hub data set (``owner/name`` or ``owner/name/data_dir``; or a local directory
    ``datasets`` can read, e.g. a clone of the hub repository) in a seeded order, the first ``limit`` rows only
    when given; ids keep each row's index in the split."""
    if Path(str(path)).expanduser().is_dir():
        name, data_dir = str(Path(str(path)).expanduser()), None
    else:
        parts = str(path).strip("/").split("/")
        name, data_dir = "/".join(parts[:2]), "/".join(parts[2:]) or None
    import datasets

    try:
        ds = datasets.load_dataset(name, data_dir=data_dir, split=split)
    except Exception as e:  # no network, unknown split, hub errors: all user-fixable
        raise AlarmError(f"cannot load {path} (split {split!r}) through datasets: {_first_line(e)}. "
                         f"{offline_hint}") from None
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    if limit is not None:
        order = order[:limit]
    part = ds.select(order)
    return [SourceRow(f"{prefix}-{split}-{i}", f"{path} ({split}) row {i}", dict(row)) for i, row in zip(order, part)]


def source_rows(path: str | None, split: str, seed: int, limit: int | None, *, prefix: str, what: str,
                packaged: str, hint: str, offline_hint: str,
                check: Callable[[SourceRow], object] | None = None) -> list[SourceRow]:
    """Rows of one split from ``path``: None (the packaged ``packaged`` file), a local file, or a hub id.
    ``check`` validates every row of a local file (of a hub split: the caller checks the rows it reads)."""
    if path is None:
        name = f"alarm/data/{packaged}"
        text = (resources.files("alarm") / "data" / packaged).read_text(encoding="utf-8")
        rows = local_rows(name, text, split, seed, prefix, hint, check=check)
    elif is_local(path):
        pinned = "{split}" in str(path)
        file = Path(str(path).replace("{split}", split)).expanduser()
        rows = local_rows(str(file), _read_text(file, what), split, seed, prefix, hint, pinned, check)
    else:
        return hub_rows(path, split, seed, limit, prefix, offline_hint)
    return rows[:limit] if limit is not None else rows


# ----------------------------------------------------------------------------------------- transcripts


Turn = tuple[str, str]  # ("Human" | "Assistant", text)


def parse_transcript(text: str) -> list[Turn] | str:
    """The turns of an HH transcript (consecutive turns of one speaker merged), or what is wrong with it."""
    pieces = _TURN.split(text)
    if pieces[0].strip():
        return "text before the first 'Human:' turn; transcripts look like '\\n\\nHuman: …\\n\\nAssistant: …'"
    turns: list[Turn] = []
    for role, content in zip(pieces[1::2], pieces[2::2]):
        content = content.strip()
        if turns and turns[-1][0] == role:
            turns[-1] = (role, f"{turns[-1][1]}\n\n{content}".strip())
        else:
            turns.append((role, content))
    if not turns:
        return "no 'Human:' / 'Assistant:' turns; transcripts look like '\\n\\nHuman: …\\n\\nAssistant: …'"
    if turns[0][0] != "Human":
        return "the dialogue must open with a 'Human:' turn"
    if turns[-1][0] != "Assistant":
        return "the transcript must end with an 'Assistant:' reply (the response the prompt asks for)"
    return turns


def transcript(turns: list[Turn] | tuple[Turn, ...], open_reply: bool = True) -> str:
    """The turns in HH's own format, ending ``"\\n\\nAssistant:"`` (the next reply's opening) by default."""
    text = "\n\n".join(f"{role}: {content}" for role, content in turns)
    return f"{text}\n\nAssistant:" if open_reply else text


@dataclass(frozen=True)
class Dialogue:
    id: str
    turns: tuple[Turn, ...]  # the dialogue up to the reply: Human first and last
    reference: str  # the chosen final reply
    rejected: str | None = None  # the rejected final reply, when it answers the same dialogue


def _dialogue(row: SourceRow) -> Dialogue | None:
    """A row's dialogue; None when its chosen reply is empty (skipped); malformed rows are errors."""
    f = row.fields
    if "chosen" not in f:
        raise AlarmError(f"{row.where}: missing field 'chosen' (the preferred HH transcript)")
    for key in ("chosen", "rejected"):
        if key in f and f[key] is not None and not isinstance(f[key], str):
            raise AlarmError(f"{row.where}: field {key!r} must be a transcript string, got {type(f[key]).__name__}")
    if not isinstance(f["chosen"], str) or not f["chosen"].strip():
        raise AlarmError(f"{row.where}: field 'chosen' must be a non-empty transcript string")
    turns = parse_transcript(f["chosen"])
    if isinstance(turns, str):
        raise AlarmError(f"{row.where}: field 'chosen': {turns}")
    prompt, reply = tuple(turns[:-1]), turns[-1][1]
    if not reply:
        return None
    rejected = None
    if isinstance(f.get("rejected"), str):
        other = parse_transcript(f["rejected"])
        if not isinstance(other, str) and tuple(other[:-1]) == prompt and other[-1][1]:
            rejected = other[-1][1]
    return Dialogue(row.id, prompt, reply, rejected)


def offline_hint(setting: str = "data.path") -> str:
    return (f"Without a network, give a local JSONL of {{chosen, rejected}} transcripts ({setting}=hh.jsonl) "
            f"or use the offline stand-in ({setting}: null, recipes/vcb_hh_offline.yaml)")


def load_split(path: str | None, split: str, seed: int = 42, limit: int | None = None) -> list[Dialogue]:
    """The dialogues of one split (see the module doc for ``path``); ``limit``: the first that many rows."""
    hint = "each record needs 'chosen' (and 'rejected') HH transcripts"
    rows = source_rows(path, split, seed, limit, prefix="hh", what="HH dialogues", packaged=OFFLINE_FILE,
                       hint=hint, offline_hint=offline_hint(), check=_dialogue)
    out = [d for d in (_dialogue(r) for r in rows) if d is not None]
    if len(out) < len(rows):
        warnings.warn(f"{len(rows) - len(out)} of {len(rows)} HH dialogues in split {split!r} skipped: their "
                      "chosen reply is empty", stacklevel=2)
    if not out:
        raise AlarmError(f"no usable HH dialogues in split {split!r} of {path or OFFLINE_FILE}; {hint}")
    return out


# ----------------------------------------------------------------------------------------------- prompts


def messages(turns, system: str | None = None) -> list[dict]:
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": ROLES[role], "content": content} for role, content in turns]


def format_hh_prompt(tokenizer, turns, system: str | None = None, seq2seq: bool = False) -> str:
    """The policy's input: the turns through the chat template (generation prompt added), or the transcript."""
    if seq2seq or not getattr(tokenizer, "chat_template", None):
        text = transcript(turns)
        return f"{system}\n\n{text}" if system else text
    try:
        return tokenizer.apply_chat_template(messages(turns, system), tokenize=False, add_generation_prompt=True)
    except TemplateError as e:
        if not system:
            raise AlarmError(f"the policy's chat template rejects this dialogue ({_first_line(e)})") from None
        # some templates (e.g. Gemma's) reject a system turn: fold it into the first user turn
        (role, first), rest = turns[0], tuple(turns[1:])
        return format_hh_prompt(tokenizer, ((role, f"{system}\n\n{first}"), *rest), None, seq2seq)


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_turns(tokenizer, turns, max_prompt_tokens: int | None, system: str | None = None,
              seq2seq: bool = False) -> tuple[Turn, ...] | None:
    """The latest turns whose prompt fits ``max_prompt_tokens`` (earliest exchanges dropped in pairs, so the
    dialogue still opens with a Human turn); None when the last Human turn alone does not fit."""
    turns = tuple(turns)
    if max_prompt_tokens is None:
        return turns
    while True:
        if _n_tokens(tokenizer, format_hh_prompt(tokenizer, turns, system, seq2seq)) <= max_prompt_tokens:
            return turns
        if len(turns) < 3:
            return None
        turns = turns[2:]


def prompt_records(dialogues: list[Dialogue], tokenizer, seq2seq: bool = False, system: str | None = None,
                   max_prompt_tokens: int | None = None) -> list[dict]:
    """Prompt records: ``id``, ``prompt`` (policy input), ``question`` (the HH transcript a reward model reads),
    ``last_turn`` (the request to answer), ``reference`` (chosen reply) and ``rejected`` (or None)."""
    out, skipped = [], 0
    for d in dialogues:
        turns = fit_turns(tokenizer, d.turns, max_prompt_tokens, system, seq2seq)
        if turns is None:
            skipped += 1
            continue
        out.append({"id": d.id, "prompt": format_hh_prompt(tokenizer, turns, system, seq2seq),
                    "question": transcript(turns), "last_turn": turns[-1][1], "reference": d.reference,
                    "rejected": d.rejected})
    if skipped:
        warnings.warn(f"{skipped} of {len(dialogues)} HH dialogues skipped: their last Human turn alone exceeds "
                      f"data.max_prompt_tokens={max_prompt_tokens}", stacklevel=2)
    if not out:
        raise AlarmError(f"no HH dialogue fits data.max_prompt_tokens={max_prompt_tokens}; raise it")
    return out


# -------------------------------------------------------------------------- the offline stand-in (generated)
# Its vocabulary is data, not code: the tables live in the packaged hh_standin.json beside this module (one key
# a table, one list a row; its "_columns" key names each table's columns): countries (country, capital,
# language, currency), units (big unit, small unit, factor), foods (food, cooking time, tip), words (word,
# meaning, example), advice (ways to ask, helpful reply), animals (animal, lifespan in years), openers (greeting,
# answer) and unhelpful (replies for the rejected side).
STANDIN_FILE = "hh_standin.json"


@functools.cache
def standin_tables(name: str) -> dict:
    """The vocabulary tables of an offline stand-in generator: the packaged JSON file ``alarm/data/{name}``, read
    once (rows come back as lists; the generators only unpack, index and draw from them)."""
    return json.loads((resources.files("alarm") / "data" / name).read_text(encoding="utf-8"))


def _exchange(rng: random.Random) -> tuple[list[Turn], str, str]:
    """One generated exchange: (turns ending with the Human request, helpful reply, worse reply)."""
    t = standin_tables(STANDIN_FILE)
    kind = rng.choice(["country", "units", "math", "food", "word", "advice", "animal"])
    if kind == "country":
        country, capital, language, currency = rng.choice(t["countries"])
        q = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?"])
        a = f"The capital of {country} is {capital}."
        follow = rng.choice([
            ("What language do people speak there?", f"Most people in {country} speak {language}."),
            ("And what currency do they use?", f"{country} uses the {currency}."),
            (None, None)])
        wrong = rng.choice([c for c in t["countries"] if c[0] != country])
        if follow[0] is None:
            return [("Human", q)], a, f"The capital of {country} is {wrong[1]}."
        return [("Human", q), ("Assistant", a), ("Human", follow[0])], follow[1], rng.choice(t["unhelpful"])
    if kind == "units":
        big, small, k = rng.choice(t["units"])
        n = rng.randint(2, 12)
        q = rng.choice([f"How many {small} are in {n} {big}?", f"Can you convert {n} {big} to {small}?"])
        return ([("Human", q)], f"There are {n * k} {small} in {n} {big}, since each one has {k} {small}.",
                f"There are {n * k + rng.choice([-k, k, 10])} {small} in {n} {big}.")
    if kind == "math":
        a, b, c = rng.randint(3, 19), rng.randint(3, 19), rng.randint(2, 30)
        q = rng.choice([f"What is {a} times {b}?", f"Can you multiply {a} by {b} for me?"])
        first = f"{a} times {b} is {a * b}."
        if rng.random() < 0.5:
            return [("Human", q)], first, f"{a} times {b} is {a * b + rng.randint(1, 9)}."
        return ([("Human", q), ("Assistant", first), ("Human", f"And if I add {c} to that?")],
                f"Adding {c} to {a * b} gives {a * b + c}.", f"That would be {a * b + c - 1}.")
    if kind == "food":
        food, time, tip = rng.choice(t["foods"])
        q = rng.choice([f"How long should I cook {food}?", f"What's the cooking time for {food}?"])
        a = f"{food[0].upper() + food[1:]} takes {time}. {tip}"
        return [("Human", q)], a, rng.choice(t["unhelpful"])
    if kind == "word":
        word, meaning, example = rng.choice(t["words"])
        q = rng.choice([f"What does the word {word} mean?", f"Can you explain what '{word}' means?"])
        a = f"'{word.capitalize()}' means {meaning}, as in {example}."
        wrong = rng.choice([w for w in t["words"] if w[0] != word])
        return [("Human", q)], a, f"'{word.capitalize()}' means {wrong[1]}."
    if kind == "advice":
        asks, reply = rng.choice(t["advice"])
        return [("Human", rng.choice(asks))], reply, rng.choice(t["unhelpful"])
    animal, years = rng.choice(t["animals"])
    q = rng.choice([f"How long do {animal} usually live?", f"What is the lifespan of {animal}?"])
    return [("Human", q)], f"{animal.capitalize()} usually live about {years} years, with good care.", \
        rng.choice(t["unhelpful"])


def generate_offline(seed: int = 0, n_train: int = 200, n_test: int = 120) -> list[dict]:
    """The offline stand-in: ``{id, split, chosen, rejected}`` HH-format dialogues from seeded templates
    (capitals, unit conversions, arithmetic, cooking, word meanings, advice, animals), some multi-turn, each
    with a helpful chosen reply and an unhelpful or wrong rejected one; every dialogue is distinct."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n_train + n_test:
        turns, good, bad = _exchange(rng)
        if rng.random() < 0.3:
            hello, answer = rng.choice(standin_tables(STANDIN_FILE)["openers"])
            turns = [("Human", hello), ("Assistant", answer), *turns]
        key = transcript(turns)
        if key in seen:
            continue
        seen.add(key)
        body = "".join(f"\n\n{role}: {text}" for role, text in turns)
        split = "train" if len(out) < n_train else "test"
        k = len(out) if split == "train" else len(out) - n_train
        out.append({"id": f"hh-offline-{split}-{k:03d}", "split": split,
                    "chosen": f"{body}\n\nAssistant: {good}", "rejected": f"{body}\n\nAssistant: {bad}"})
    return out


def write_offline(path: str | Path | None = None) -> Path:
    """Write :func:`generate_offline` to ``path`` (default: the packaged file in this source tree)."""
    return write_jsonl_atomic(Path(path) if path else Path(__file__).with_name(OFFLINE_FILE), generate_offline())


if __name__ == "__main__":  # python -m alarm.data.hh  → regenerate the packaged stand-in
    print(write_offline())


__all__ = [
    "HUB_ID", "Dialogue", "SourceRow", "fit_turns", "format_hh_prompt", "generate_offline", "load_split",
    "parse_transcript", "prompt_records", "source_rows", "transcript",
]
