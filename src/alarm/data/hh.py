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

_COUNTRIES = [  # country, capital, language, currency
    ("France", "Paris", "French", "euro"), ("Japan", "Tokyo", "Japanese", "yen"),
    ("Kenya", "Nairobi", "Swahili and English", "Kenyan shilling"), ("Peru", "Lima", "Spanish", "sol"),
    ("Canada", "Ottawa", "English and French", "Canadian dollar"), ("Egypt", "Cairo", "Arabic", "Egyptian pound"),
    ("Norway", "Oslo", "Norwegian", "Norwegian krone"), ("India", "New Delhi", "Hindi and English", "rupee"),
    ("Brazil", "Brasilia", "Portuguese", "real"), ("Poland", "Warsaw", "Polish", "zloty"),
    ("Thailand", "Bangkok", "Thai", "baht"), ("Mexico", "Mexico City", "Spanish", "Mexican peso"),
    ("Australia", "Canberra", "English", "Australian dollar"), ("Turkey", "Ankara", "Turkish", "lira"),
    ("Sweden", "Stockholm", "Swedish", "Swedish krona"), ("Vietnam", "Hanoi", "Vietnamese", "dong"),
    ("Greece", "Athens", "Greek", "euro"), ("Chile", "Santiago", "Spanish", "Chilean peso"),
    ("Morocco", "Rabat", "Arabic and Berber", "dirham"), ("Hungary", "Budapest", "Hungarian", "forint"),
    ("Ireland", "Dublin", "English and Irish", "euro"), ("South Korea", "Seoul", "Korean", "won"),
    ("Argentina", "Buenos Aires", "Spanish", "Argentine peso"), ("Portugal", "Lisbon", "Portuguese", "euro"),
]
_UNITS = [  # big unit, small unit, factor
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
    ("kilometers", "meters", 1000), ("kilograms", "grams", 1000), ("feet", "inches", 12),
    ("liters", "milliliters", 1000), ("years", "months", 12), ("meters", "centimeters", 100),
]
_FOODS = [  # food, time, tip
    ("white rice", "about 18 minutes", "Simmer it covered on low heat and let it rest for five minutes after."),
    ("dried pasta", "8 to 12 minutes", "Salt the water well and taste a piece a minute before the packet time."),
    ("hard-boiled eggs", "about 10 minutes", "Cool them in cold water afterwards so they peel easily."),
    ("broccoli", "3 to 5 minutes", "Steam it rather than boil it to keep it bright green and crisp."),
    ("potatoes", "15 to 20 minutes", "Cut them into even pieces and start them in cold salted water."),
    ("quinoa", "about 15 minutes", "Rinse it first to remove the bitter coating."),
    ("red lentils", "15 to 20 minutes", "They break down as they cook, which makes them good for soups."),
    ("corn on the cob", "about 5 minutes", "Add it to water that is already boiling."),
    ("salmon fillets", "12 to 15 minutes in a hot oven", "It is done when it flakes easily with a fork."),
    ("chicken breast", "20 to 25 minutes in the oven", "Check that the middle reaches 74 degrees Celsius."),
]
_WORDS = [  # word, meaning, example
    ("ephemeral", "lasting for a very short time", "the ephemeral beauty of a soap bubble"),
    ("candid", "honest and direct, even about difficult things", "a candid answer about her mistakes"),
    ("frugal", "careful not to spend more money than needed", "a frugal student who cooks at home"),
    ("meticulous", "very careful about every small detail", "a meticulous editor who checks every comma"),
    ("resilient", "able to recover quickly from difficulties", "a resilient team that bounced back"),
    ("ambiguous", "open to more than one meaning", "an ambiguous sentence that confused readers"),
    ("lethargic", "tired and lacking energy", "feeling lethargic after a heavy lunch"),
    ("pragmatic", "dealing with problems in a practical way", "a pragmatic plan that fits the budget"),
    ("verbose", "using more words than needed", "a verbose email that could have been one line"),
    ("benevolent", "kind and wanting to help others", "a benevolent neighbor who shovels everyone's snow"),
    ("tenacious", "not giving up easily", "a tenacious runner who finished despite the rain"),
    ("obsolete", "no longer used because something newer exists", "an obsolete phone charger"),
    ("serene", "calm and peaceful", "a serene lake at sunrise"),
    ("gregarious", "enjoying the company of other people", "a gregarious host who knows every guest"),
]
_ADVICE = [  # ways to ask, helpful reply
    (("I can't fall asleep at night. Any tips?", "How can I sleep better?", "I keep waking up tired. What helps?"),
     "Try to keep the same bedtime every day, avoid screens for an hour before bed, and keep your room cool and "
     "dark. Cutting caffeine after lunch also helps many people."),
    (("How do I start running if I'm out of shape?", "I want to get into running. Where do I begin?"),
     "Start with short run-walk intervals, such as one minute running and two minutes walking, three times a "
     "week. Increase the running part slowly and rest between sessions."),
    (("How can I save more money each month?", "I never have money left at the end of the month. What can I do?"),
     "Write down what you spend for a month, then set a budget with a fixed amount moved to savings on payday. "
     "Cancelling unused subscriptions is an easy first win."),
    (("What's a good way to study for exams?", "How should I prepare for a big test?"),
     "Spread your study over several days, test yourself with practice questions instead of rereading, and "
     "explain the topics out loud. Sleep well the night before."),
    (("How do I keep my houseplants alive?", "My plants keep dying. What am I doing wrong?"),
     "Most houseplants die from too much water. Water only when the top of the soil is dry, use pots with "
     "drainage holes, and put each plant in the light it needs."),
    (("How can I prepare for a job interview?", "I have an interview next week. Any advice?"),
     "Research the company, prepare short stories that show your skills, and practice answering common "
     "questions out loud. Prepare two or three questions to ask them as well."),
    (("How do I make friends in a new city?", "I just moved and don't know anyone. How can I meet people?"),
     "Join a regular activity such as a sports club, a class or a volunteer group, so you see the same people "
     "every week. Say yes to invitations, and invite people yourself."),
    (("How can I stop procrastinating?", "I keep putting things off. How do I get started?"),
     "Break the task into a first step that takes five minutes and start with just that. Put your phone in "
     "another room and work in short timed blocks with breaks."),
    (("How much water should I drink a day?", "Am I drinking enough water?"),
     "A common guide is about eight glasses a day, but needs vary with heat and exercise. Drinking when you are "
     "thirsty and having pale yellow urine are good signs."),
    (("How do I learn a new language quickly?", "What's the best way to learn Spanish?"),
     "Practice a little every day, learn the most common words first, and speak with native speakers as early "
     "as you can. Listening to podcasts or shows in the language helps too."),
    (("How can I reduce stress at work?", "Work is stressing me out. What can I do?"),
     "Take short breaks, write a list to get tasks out of your head, and tackle the most important one first. "
     "Talk to your manager if the workload is too much."),
    (("How do I clean a cast iron pan?", "What's the right way to wash cast iron?"),
     "Rinse it with hot water and scrub with a brush, using a little soap if needed. Dry it completely on the "
     "stove and rub in a thin layer of oil."),
]
_ANIMALS = [("dogs", "10 to 13"), ("cats", "12 to 18"), ("horses", "25 to 30"), ("rabbits", "8 to 12"),
            ("hamsters", "2 to 3"), ("parrots", "20 to 50"), ("goldfish", "10 to 15"), ("tortoises", "50 to 100")]
_OPENERS = [("Hi there!", "Hello! How can I help you today?"),
            ("Can I ask you something?", "Of course. What would you like to know?"),
            ("I need some help with something.", "Sure, I'm happy to help. What is it?"),
            ("Hello, are you there?", "Yes, I'm here. What can I do for you?")]
_UNHELPFUL = ["I don't know.", "Why do you want to know that?", "You should look it up yourself.",
              "I'd rather not talk about that.", "That's not something I can help with."]


def _exchange(rng: random.Random) -> tuple[list[Turn], str, str]:
    """One generated exchange: (turns ending with the Human request, helpful reply, worse reply)."""
    kind = rng.choice(["country", "units", "math", "food", "word", "advice", "animal"])
    if kind == "country":
        country, capital, language, currency = rng.choice(_COUNTRIES)
        q = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?"])
        a = f"The capital of {country} is {capital}."
        follow = rng.choice([
            ("What language do people speak there?", f"Most people in {country} speak {language}."),
            ("And what currency do they use?", f"{country} uses the {currency}."),
            (None, None)])
        wrong = rng.choice([c for c in _COUNTRIES if c[0] != country])
        if follow[0] is None:
            return [("Human", q)], a, f"The capital of {country} is {wrong[1]}."
        return [("Human", q), ("Assistant", a), ("Human", follow[0])], follow[1], rng.choice(_UNHELPFUL)
    if kind == "units":
        big, small, k = rng.choice(_UNITS)
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
        food, time, tip = rng.choice(_FOODS)
        q = rng.choice([f"How long should I cook {food}?", f"What's the cooking time for {food}?"])
        a = f"{food[0].upper() + food[1:]} takes {time}. {tip}"
        return [("Human", q)], a, rng.choice(_UNHELPFUL)
    if kind == "word":
        word, meaning, example = rng.choice(_WORDS)
        q = rng.choice([f"What does the word {word} mean?", f"Can you explain what '{word}' means?"])
        a = f"'{word.capitalize()}' means {meaning}, as in {example}."
        wrong = rng.choice([w for w in _WORDS if w[0] != word])
        return [("Human", q)], a, f"'{word.capitalize()}' means {wrong[1]}."
    if kind == "advice":
        asks, reply = rng.choice(_ADVICE)
        return [("Human", rng.choice(asks))], reply, rng.choice(_UNHELPFUL)
    animal, years = rng.choice(_ANIMALS)
    q = rng.choice([f"How long do {animal} usually live?", f"What is the lifespan of {animal}?"])
    return [("Human", q)], f"{animal.capitalize()} usually live about {years} years, with good care.", \
        rng.choice(_UNHELPFUL)


def generate_offline(seed: int = 0, n_train: int = 200, n_test: int = 120) -> list[dict]:
    """The offline stand-in: ``{id, split, chosen, rejected}`` HH-format dialogues from seeded templates
    (capitals, unit conversions, arithmetic, cooking, word meanings, advice, animals), some multi-turn, each
    with a helpful chosen reply and an unhelpful or wrong rejected one; every dialogue is distinct."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n_train + n_test:
        turns, good, bad = _exchange(rng)
        if rng.random() < 0.3:
            hello, answer = rng.choice(_OPENERS)
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
