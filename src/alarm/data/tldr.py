"""TL;DR summarization data (the VCB paper's summarization task) and the prompt a summarization policy sees.

Sources (``data.path`` of a ``data.task: tldr`` recipe):

- **The hub set** ``trl-lib/tldr`` through ``datasets`` (needs a network or a local ``datasets`` cache): the
  filtered Reddit TL;DR of Stiennon et al. 2020 (the posts of OpenAI's ``summarize_from_feedback``) as
  ``{prompt, completion}`` rows — ``prompt`` is ``"SUBREDDIT: r/…\\n\\nTITLE: …\\n\\nPOST: …\\n\\nTL;DR:"``,
  ``completion`` the human-written summary. Splits ``train``, ``validation``, ``test``; read in an order
  shuffled with ``data.split_seed``, like the HH set (alarm.data.hh), ``data.max_train_prompts`` drawing a seeded
  subset before any prompt is built.
- **A local file** (JSONL, ``.jsonl.gz`` or a JSON list): ``{"prompt", "completion"}`` records as above, or
  ``{"post", "summary"}`` with optional ``"title"`` and ``"subreddit"`` (OpenAI's own ``tldr_3_filtered``
  files, ``{split}.jsonl``, have exactly these); an optional ``"id"`` and ``"split"``
  (every line or none; without it the file is split 90/10 into ``train``/``test`` with ``data.split_seed``). ``{split}``
  in the path reads one file per split.
- **None**: the packaged offline stand-in ``alarm/data/tldr_offline.jsonl``: Reddit-style advice posts with a
  human-style one-sentence summary, made by the seeded template generator :func:`generate_offline` (200 train,
  120 test).

Prompts: a chat policy reads :data:`INSTRUCTION` and the post (subreddit, title, post: the TL;DR layout) through
its chat template; a model without a template reads the TL;DR layout ending ``"TL;DR:"`` (what the hub rows
hold); a seq2seq one ``"summarize: "`` and the post. Rewards get the post's layout (``question``: what a reward
model trained on ``summarize_from_feedback`` reads as its first sequence), the post text alone (``post``) and
the human summary (``reference``). With ``data.max_prompt_tokens`` the post is cut (at a word) so the prompt fits.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from alarm.data.hh import SourceRow, source_rows, standin_tables
from alarm.errors import AlarmError
from alarm.io import write_jsonl_atomic

HUB_ID = "trl-lib/tldr"
OFFLINE_FILE = "tldr_offline.jsonl"
INSTRUCTION = "Summarize the following Reddit post in one or two sentences."
_LAYOUT = re.compile(r"^\s*SUBREDDIT:\s*(?P<subreddit>.*?)\s*\n+\s*TITLE:\s*(?P<title>.*?)\s*\n+\s*POST:\s*"
                     r"(?P<post>.*?)\s*(?:\n+\s*TL;DR:\s*)?$", re.DOTALL)


@dataclass(frozen=True)
class Post:
    id: str
    post: str
    reference: str
    title: str | None = None
    subreddit: str | None = None


def _text(row: SourceRow, key: str, required: bool = True) -> str | None:
    v = row.fields.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        raise AlarmError(f"{row.where}: field {key!r} must be a non-empty string")
    return v.strip()


def _subreddit(name: str | None) -> str | None:
    """``r/name`` (OpenAI's TL;DR files give the bare name, trl-lib/tldr's prompts ``r/name``)."""
    return name if name is None or name.startswith("r/") else f"r/{name}"


def _post(row: SourceRow) -> Post:
    f = row.fields
    if "prompt" in f or "completion" in f:
        prompt, summary = _text(row, "prompt"), _text(row, "completion")
        m = _LAYOUT.match(prompt)
        if m and m["post"]:
            return Post(row.id, m["post"], summary, m["title"] or None, _subreddit(m["subreddit"] or None))
        body = re.sub(r"\s*TL;DR:\s*$", "", prompt).strip()
        if not body:
            raise AlarmError(f"{row.where}: field 'prompt' holds no post before 'TL;DR:'")
        return Post(row.id, body, summary)
    if "post" in f or "summary" in f:
        return Post(row.id, _text(row, "post"), _text(row, "summary"), _text(row, "title", False),
                    _subreddit(_text(row, "subreddit", False)))
    raise AlarmError(f"{row.where}: no post to summarize: give 'prompt' and 'completion' (trl-lib/tldr) or "
                     "'post' and 'summary'")


def offline_hint(setting: str = "data.path") -> str:
    return (f"Without a network, give a local JSONL of {{post, summary}} or {{prompt, completion}} records "
            f"({setting}=tldr.jsonl) or use the offline stand-in ({setting}: null, recipes/vcb_tldr_offline.yaml)")


def load_split(path: str | None, split: str, seed: int = 42, limit: int | None = None) -> list[Post]:
    """The posts of one split (see the module doc for ``path``); ``limit``: the first that many rows."""
    rows = source_rows(path, split, seed, limit, prefix="tldr", what="TL;DR posts", packaged=OFFLINE_FILE,
                       hint="each record needs 'prompt' and 'completion', or 'post' and 'summary'",
                       offline_hint=offline_hint(), check=_post)
    return [_post(r) for r in rows]


# ----------------------------------------------------------------------------------------------- prompts


def layout(p: Post, post: str | None = None) -> str:
    """The TL;DR layout of a post (without the closing ``TL;DR:``): subreddit, title and post when known."""
    parts = [f"SUBREDDIT: {p.subreddit}"] if p.subreddit else []
    parts += [f"TITLE: {p.title}"] if p.title else []
    return "\n\n".join([*parts, f"POST: {p.post if post is None else post}"])


def format_tldr_prompt(tokenizer, p: Post, system: str | None = None, seq2seq: bool = False,
                       post: str | None = None) -> str:
    """The policy's input for one post (``post``: a cut version of its text)."""
    block = layout(p, post)
    if seq2seq:
        return f"summarize: {block}"
    if not getattr(tokenizer, "chat_template", None):
        text = f"{block}\n\nTL;DR:"
        return f"{system}\n\n{text}" if system else text
    user = f"{INSTRUCTION}\n\n{block}"
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        if not system:
            raise
        return tokenizer.apply_chat_template([{"role": "user", "content": f"{system}\n\n{user}"}], tokenize=False,
                                             add_generation_prompt=True)


def fit_post(tokenizer, p: Post, max_prompt_tokens: int | None, system: str | None = None,
             seq2seq: bool = False) -> str:
    """The longest head of the post (cut between words, "…" appended) whose prompt fits the budget."""
    def fits(text: str) -> bool:
        prompt = format_tldr_prompt(tokenizer, p, system, seq2seq, text)
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= max_prompt_tokens

    if max_prompt_tokens is None or fits(p.post):
        return p.post
    cuts = [j for j, ch in enumerate(p.post) if ch.isspace()]
    lo, hi = -1, len(cuts) - 1  # the largest k whose cut fits; -1: none does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(p.post[: cuts[mid]] + " …"):
            lo = mid
        else:
            hi = mid - 1
    if lo < 0:
        raise AlarmError(f"post {p.id!r}: data.max_prompt_tokens={max_prompt_tokens} leaves no room for the post "
                         "after the instruction and title; raise it")
    return p.post[: cuts[lo]] + " …"


def prompt_records(posts: list[Post], tokenizer, seq2seq: bool = False, system: str | None = None,
                   max_prompt_tokens: int | None = None) -> list[dict]:
    """Prompt records: ``id``, ``prompt`` (policy input), ``question`` (the post's TL;DR layout), ``post``,
    ``title``, ``subreddit`` and ``reference`` (the human summary)."""
    out = []
    for p in posts:
        text = fit_post(tokenizer, p, max_prompt_tokens, system, seq2seq)
        out.append({"id": p.id, "prompt": format_tldr_prompt(tokenizer, p, system, seq2seq, text),
                    "question": layout(p, text), "post": text, "title": p.title, "subreddit": p.subreddit,
                    "reference": p.reference})
    return out


# -------------------------------------------------------------------------- the offline stand-in (generated)
# Its vocabulary is data, not code: the tables live in the packaged tldr_standin.json beside this module (one key
# a table; its "_columns" key says what each holds): durations (in the post, in the summary), tried (what the
# poster tried), scenarios (subreddit, who, pronouns, setup, problems as (in the post, in the summary), details,
# options, an optional own "tried"), titles (templates) and things (the scenarios' "who" that are not people).
STANDIN_FILE = "tldr_standin.json"


def _offline_post(rng: random.Random) -> tuple[str, str, str, str]:
    """(subreddit, title, post, summary) of one generated post."""
    t = standin_tables(STANDIN_FILE)
    s = rng.choice(t["scenarios"])
    (long, short), (during, during_short) = rng.choice(s["problems"]), rng.choice(t["durations"])
    opt1, opt2 = rng.choice(s["options"])
    age, sex = rng.randint(19, 45), rng.choice("MF")
    details = rng.sample(s["details"], 2)
    who = s["who"]
    me = f"({age}{sex})"
    setup = s["setup"].replace("I'm", f"I'm {me}", 1) if "I'm" in s["setup"] \
        else re.sub(r"\bI\b", f"I {me}", s["setup"], count=1)
    obj, subj = s.get("pron", ("them", "they"))
    tried = rng.choice(s.get("tried") or t["tried"]).format(obj=obj, subj=subj)
    if who in t["things"]:
        title = rng.choice([f"My {who} {short}. What should I do?", f"Advice needed about a {who} that {short}"])
        post = (f"{setup}. My {who} {long}. {details[0]} {details[1]} "
                f"I keep going back and forth. Should I {opt1}, or should I {opt2}?")
        summary = f"My {who} {short}. Should I {opt1} or {opt2}?"
    else:
        title = rng.choice(t["titles"]).format(who=who, short=short)
        post = (f"{setup}. My {who} {long}, and it has been going on {during}. "
                f"{details[0]} {details[1]} {tried} Should I {opt1}, or should I {opt2}?")
        summary = f"My {who} {short}, and it has gone on {during_short}. Should I {opt1} or {opt2}?"
    return s["subreddit"], title, post, summary


def generate_offline(seed: int = 0, n_train: int = 200, n_test: int = 120) -> list[dict]:
    """The offline stand-in: ``{id, split, subreddit, title, post, summary}`` records of Reddit-style advice
    posts from seeded templates (ten scenarios: roommates, partners, friends, neighbors, coworkers, a loan, a
    class, a dog, a job offer, a sister), each with a one-sentence summary of the problem and the question
    asked; every post is distinct."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n_train + n_test:
        subreddit, title, post, summary = _offline_post(rng)
        if post in seen:
            continue
        seen.add(post)
        split = "train" if len(out) < n_train else "test"
        k = len(out) if split == "train" else len(out) - n_train
        out.append({"id": f"tldr-offline-{split}-{k:03d}", "split": split, "subreddit": subreddit, "title": title,
                    "post": post, "summary": summary})
    return out


def write_offline(path: str | Path | None = None) -> Path:
    """Write :func:`generate_offline` to ``path`` (default: the packaged file in this source tree)."""
    return write_jsonl_atomic(Path(path) if path else Path(__file__).with_name(OFFLINE_FILE), generate_offline())


if __name__ == "__main__":  # python -m alarm.data.tldr  → regenerate the packaged stand-in
    print(write_offline())


__all__ = ["HUB_ID", "INSTRUCTION", "Post", "fit_post", "format_tldr_prompt", "generate_offline", "layout",
           "load_split", "prompt_records"]
