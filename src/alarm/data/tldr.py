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

from alarm.data.hh import SourceRow, source_rows
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

_DURATIONS = [("for about three months", "for months"), ("since last spring", "since spring"),
              ("for almost a year", "for a year"), ("for the past few weeks", "for weeks"),
              ("ever since we met", "since we met")]
_TRIED = ["I brought it up with {obj} once, and things got better for about a week.",
          "I tried dropping hints, but nothing changed.",
          "I talked to {obj} directly and {subj} promised to change, but nothing has changed.",
          "I haven't said anything yet because I hate confrontation."]
_SCENARIOS = [
    {"subreddit": "r/Advice", "who": "roommate", "pron": ("them", "they"),
     "setup": "I share a two-bedroom apartment with my roommate",
     "problems": [("keeps eating my groceries without asking", "eats my food without asking"),
                  ("leaves dirty dishes in the sink for days", "leaves dishes in the sink for days"),
                  ("has friends over until 2 am on weeknights", "has loud guests on weeknights"),
                  ("pays their share of the rent late every month", "pays rent late")],
     "details": ["I work early shifts, so it really affects me.", "Our lease runs until next summer.",
                 "Otherwise we get along fine and I don't want to ruin that.",
                 "Our other friends think I'm overreacting."],
     "options": [("have a serious talk with them", "start looking for a new place"),
                 ("write up house rules", "just let it go")]},
    {"subreddit": "r/relationships", "who": "boyfriend", "pron": ("him", "he"),
     "setup": "My boyfriend and I have been together for two years",
     "problems": [("spends every weekend playing video games", "games all weekend"),
                  ("checks his phone all through dinner", "is on his phone at dinner"),
                  ("forgets the plans we make together", "forgets our plans"),
                  ("makes jokes about my job in front of his friends", "mocks my job in front of friends")],
     "details": ["I feel like I'm not a priority anymore.", "He is sweet in every other way.",
                 "We live together, so I can't just avoid it.", "My sister says this is a red flag."],
     "options": [("tell him how much it hurts me", "take a break from the relationship"),
                 ("suggest couples counseling", "accept it as part of who he is")]},
    {"subreddit": "r/relationships", "who": "best friend", "pron": ("her", "she"),
     "setup": "My best friend and I have known each other since high school",
     "problems": [("cancels our plans at the last minute", "cancels plans last minute"),
                  ("borrowed 400 dollars and hasn't paid it back", "hasn't repaid 400 dollars"),
                  ("only calls me when she needs a favor", "only calls when she needs something"),
                  ("keeps sharing my secrets with other people", "shares my secrets")],
     "details": ["She is going through a rough time at work.", "I have always been there for her.",
                 "We have a lot of mutual friends.", "I'm starting to dread seeing her."],
     "options": [("confront her about it", "quietly drift apart"), ("give her one more chance", "end the friendship")]},
    {"subreddit": "r/neighbors", "who": "neighbor", "pron": ("him", "he"),
     "setup": "I moved into a quiet street last year",
     "problems": [("plays loud music after midnight", "plays loud music at night"),
                  ("parks in front of my driveway", "blocks my driveway"),
                  ("leaves his dog barking for hours while he is at work", "leaves his dog barking all day"),
                  ("lets his trash spill into my yard", "lets trash spill into my yard")],
     "details": ["I have a newborn who wakes up easily.", "Other neighbors have complained too.",
                 "He seems friendly when we talk.", "I own my house, so moving is not an option."],
     "options": [("knock on his door and talk to him", "call the city about it"),
                 ("leave him a polite note", "ask the homeowners association to step in")]},
    {"subreddit": "r/work", "who": "coworker", "pron": ("her", "she"),
     "setup": "I have worked on a small marketing team for three years",
     "problems": [("takes credit for my ideas in meetings", "takes credit for my ideas"),
                  ("leaves early and dumps her tasks on me", "dumps her work on me"),
                  ("talks loudly on personal calls at her desk", "takes loud personal calls"),
                  ("keeps missing deadlines that my work depends on", "misses deadlines I depend on")],
     "details": ["Our manager is very hands-off.", "I'm up for a promotion this year.",
                 "She has been here longer than me.", "It is starting to affect my reviews."],
     "options": [("raise it with our manager", "talk to her privately first"),
                 ("document everything", "look for a job on another team")]},
    {"subreddit": "r/personalfinance", "who": "car loan", "setup": "I just started my first full-time job",
     "problems": [("has an interest rate of 9 percent", "is at 9 percent interest"),
                  ("still has 12,000 dollars left on it", "has 12,000 dollars left"),
                  ("takes almost a third of my paycheck", "takes a third of my pay"),
                  ("was co-signed by my dad, who wants it gone", "was co-signed by my dad")],
     "details": ["I have about 8,000 dollars in savings.", "My job offers a retirement match I don't use yet.",
                 "I have no other debt.", "My rent is going up next month."],
     "options": [("pay the loan off early", "put the money into savings"),
                 ("refinance the loan", "sell the car and buy a cheaper one")]},
    {"subreddit": "r/college", "who": "statistics class", "setup": "I'm in my second year of a biology degree",
     "problems": [("is going badly and I failed the midterm", "is going badly after a failed midterm"),
                  ("moves so fast that I'm lost in every lecture", "moves too fast for me"),
                  ("has a professor who never answers emails", "has a professor who ignores emails"),
                  ("takes up twenty hours of my week", "takes twenty hours a week")],
     "details": ["I need the class to graduate.", "I also work part-time at a cafe.",
                 "The drop deadline is next Friday.", "My other grades are good."],
     "options": [("drop the class and retake it", "get a tutor and push through"),
                 ("talk to my advisor", "switch to the evening section")]},
    {"subreddit": "r/dogs", "who": "dog", "tried": ["I tried a few training videos online, but nothing changed.",
                                          "Rewarding good behavior helps a little, but not enough."],
     "setup": "I adopted a two-year-old rescue dog",
     "problems": [("barks at every noise during the night", "barks all night"),
                  ("pulls so hard on the leash that walks hurt", "pulls hard on the leash"),
                  ("chews my shoes whenever I leave the house", "chews my shoes when I'm out"),
                  ("growls at my partner when he comes home", "growls at my partner")],
     "details": ["He is otherwise very gentle.", "I live in an apartment with thin walls.",
                 "I work from home three days a week.", "The shelter didn't know much about his past."],
     "options": [("hire a professional trainer", "try training him myself"),
                 ("ask my vet for advice", "give him more time to settle in")]},
    {"subreddit": "r/careerguidance", "who": "job offer", "setup": "I have been at my current company for four years",
     "problems": [("pays 20 percent more but has a long commute", "pays more but has a long commute"),
                  ("is fully remote but the company is a startup", "is remote but at a risky startup"),
                  ("comes with a better title but longer hours", "has a better title but longer hours"),
                  ("is in a city where I don't know anyone", "is in a new city")],
     "details": ["I like my team a lot.", "My current salary has not changed in two years.",
                 "I have to answer by Monday.", "My partner supports either choice."],
     "options": [("take the new job", "stay where I am"), ("ask my boss for a raise", "accept the offer")]},
    {"subreddit": "r/relationships", "who": "sister", "pron": ("her", "she"),
     "setup": "My older sister lives ten minutes away from me",
     "problems": [("borrows my car without asking", "borrows my car without asking"),
                  ("criticizes my parenting in front of my kids", "criticizes my parenting"),
                  ("expects me to babysit every weekend", "expects me to babysit every weekend"),
                  ("tells our parents everything I tell her", "tells our parents everything")],
     "details": ["We were close growing up.", "Our parents always take her side.",
                 "She is a single mom and under a lot of stress.", "My husband is getting frustrated."],
     "options": [("set firm boundaries with her", "keep the peace for the family"),
                 ("talk to her honestly", "ask our parents to help")]},
]
_TITLES = ["My {who} {short}. What should I do?", "Need advice: my {who} {short}",
           "How do I handle a {who} who {short}?", "My {who} {short} and I'm at a loss"]
_THINGS = {"car loan", "statistics class", "job offer"}  # not people: different phrasing


def _offline_post(rng: random.Random) -> tuple[str, str, str, str]:
    """(subreddit, title, post, summary) of one generated post."""
    s = rng.choice(_SCENARIOS)
    (long, short), (during, during_short) = rng.choice(s["problems"]), rng.choice(_DURATIONS)
    opt1, opt2 = rng.choice(s["options"])
    age, sex = rng.randint(19, 45), rng.choice("MF")
    details = rng.sample(s["details"], 2)
    who = s["who"]
    me = f"({age}{sex})"
    setup = s["setup"].replace("I'm", f"I'm {me}", 1) if "I'm" in s["setup"] \
        else re.sub(r"\bI\b", f"I {me}", s["setup"], count=1)
    obj, subj = s.get("pron", ("them", "they"))
    tried = rng.choice(s.get("tried") or _TRIED).format(obj=obj, subj=subj)
    if who in _THINGS:
        title = rng.choice([f"My {who} {short}. What should I do?", f"Advice needed about a {who} that {short}"])
        post = (f"{setup}. My {who} {long}. {details[0]} {details[1]} "
                f"I keep going back and forth. Should I {opt1}, or should I {opt2}?")
        summary = f"My {who} {short}. Should I {opt1} or {opt2}?"
    else:
        title = rng.choice(_TITLES).format(who=who, short=short)
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
