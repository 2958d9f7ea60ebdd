"""An LLM judge on any OpenAI-compatible chat endpoint, judged in both orders, with a verdict cache on disk.

Why each rule (the original script broke all of them):
- **Both orders.** Small and large judges prefer a position; a pair is a win for X only when the judge prefers
  X with X shown first *and* with X shown second. Any disagreement is a tie.
- **No stale verdicts.** A reply that does not parse is retried (with a reminder of the format); if it still
  does not parse, that order counts as a tie and the reply is logged, but it is not cached: a rerun asks again.
  An earlier verdict is never reused.
- **Identical responses tie** without a request (the paper's rule): a judge would only show its position bias.
- **The key stays secret.** It is read from an environment variable whose *name* is configurable; it is never
  accepted as an argument, never logged, never written to the cache.
- **Pay once.** Every parsed judgment is appended to a JSONL cache keyed by a hash of
  (model, instructions, question, response shown as A, response shown as B); a rerun, or a compare that was
  interrupted, reads the cache and only asks for what is missing.
- **Fail clearly.** Transport errors and 5xx / 429 replies are retried with exponential backoff, a bounded
  number of times; then an :class:`AlarmError` names the endpoint and what to check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alarm.errors import AlarmError, redact_url
from alarm.evaluation.statistics import win_rate_interval
from alarm.progress import Progress

log = logging.getLogger("alarm.judge")

__all__ = ["JudgeConfig", "Judgment", "PairOutcome", "Judge", "parse_verdict", "combine_orders",
           "summarize_outcomes"]

SYSTEM_PROMPT = (
    "You are an impartial judge. You compare two responses to the same user request and decide which one is "
    "better: more correct, more helpful, better grounded in any given passages, and clearer. Ignore which "
    "response comes first and ignore length unless it hurts quality. End your reply with your verdict in "
    "exactly this format: [[A]] if response A is better, [[B]] if response B is better, [[C]] for a tie."
)

USER_TEMPLATE = (
    "[User request]\n{question}\n\n"
    "[Response A]\n{a}\n[End of response A]\n\n"
    "[Response B]\n{b}\n[End of response B]\n\n"
    "Which response is better? Give one short sentence of reasoning, then the verdict: [[A]], [[B]] or [[C]]."
)

REMINDER = "Your reply had no verdict I could read. Reply with exactly one of: [[A]], [[B]] or [[C]]."

# The verdict a judge gives for one order: which displayed position won (or a tie).
A, B, TIE = "A", "B", "tie"
_TEMPLATE_VERSION = hashlib.sha256((SYSTEM_PROMPT + USER_TEMPLATE + REMINDER).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge lives and how hard to try. The API key is only read from ``os.environ[api_key_env]``."""

    base_url: str  # e.g. http://127.0.0.1:8080/v1 ("/chat/completions" is appended)
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 128
    concurrency: int = 4  # requests in flight at once
    max_retries: int = 4  # transport / 5xx / 429 retries per request, then AlarmError
    backoff: float = 1.0  # seconds before the first retry; doubles each time (capped at max_backoff)
    max_backoff: float = 30.0
    parse_retries: int = 1  # re-asks (with a format reminder) when a reply has no readable verdict
    timeout: float = 120.0  # seconds per request
    cache_path: str | None = None  # JSONL verdict cache; None = no cache
    failures_path: str | None = None  # JSONL log of replies that never parsed

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise AlarmError(f"judge URL {redact_url(self.base_url)!r} must start with http:// or https:// (e.g. http://127.0.0.1:8080/v1)")
        if not self.model:
            raise AlarmError("give the judge's model name (the name the endpoint serves)")
        if self.concurrency < 1 or self.max_retries < 0 or self.parse_retries < 0:
            raise AlarmError("judge concurrency must be ≥ 1 and retries ≥ 0")


# A verdict letter is a token: "(a)" in parentheses (any case, as in "Output (a)") or a capital A/B/C that is not
# part of a word; a lower-case letter only right after a label and before punctuation or the end ("Verdict: b.").
# So the article "a" is never a verdict: "My verdict is a tie." is a tie, "is a bit longer" nothing.
_NAME = r"(?:(?i:output|response|answer|assistant|model)\s*)?"
_TOKEN = _NAME + r"(?:\((?i:([abc]))\)|([ABC])(?![\w']))"
_TIE = r"((?i:\ba\s+)?(?i:tie|draw)\b)"
# After a label the token ends the clause: punctuation, a line end, or "is/wins/because ..." -- not "A tie", "A bit".
_END = r"(?=[ \t]*(?:$|\n|[^\w\s])|\s+(?i:is|was|wins|won|because|since|as|for)\b)"
# "Answer" is a label only with a separator ("The answer is B", "Answer: B"): "Answer B is ..." names an answer.
_LABEL = (r"(?i:\b(?:(?:final\s+)?(?:verdict|winner|decision|choice|judge?ment|preference"
          r"|better\s+(?:response|output)|best\s+(?:response|output)|best_output)\b"
          r"|(?:final\s+)?answer\b(?=[\s\"'*\\]*(?:is\b|[:=\-]))))"
          r"[\s\"'*\\]*(?i:is\b)?[\s\"'*\\]*[:=\-]?[\s\"'*\\]*")
_BETTER = (r"(?=\s+(?i:is|was)\s+(?i:clearly\s+|much\s+|slightly\s+|somewhat\s+|overall\s+)?(?i:a\s+|the\s+)?"
           r"(?i:better|best|preferred|superior)\b|\s+(?i:wins)\b)")
# In order of trust (the first kind found decides): the format the prompt asks for; a labelled verdict, including
# the paper's forced function call print_best_model(best_output="Output (a)"); "X is better" / "I prefer X" /
# "it's a tie"; a reply that is, or starts with, only a verdict ("A", "**Output (b)**", "Tie.").
_LEVELS = [
    re.compile(r"\[\[?\s*([ABCabc])\s*\]\]?"),
    re.compile(_LABEL + r"(?:" + _TOKEN + _END + r"|" + _NAME + r"([abc])(?=\s*(?:$|[.!)\]*\"'\\]))|" + _TIE + r")"),
    re.compile(r"(?<![\w(])(?<!nor )" + _TOKEN + _BETTER
               + r"|(?i:\b(?:prefer|choose|pick)\s+)" + _TOKEN + _END
               + r"|(?i:\b(?:it|this|that)(?:'s|\s+is)\s+)" + _TIE),
    re.compile(r"^[\W_]*(?:" + _NAME + r"\(?(?i:([abc]))\)?|" + _TIE + r")(?:[\W_]*$|[.!]\s|\s*\n)"),
]


# A verdict named in a negated or negative clause ("I would not choose B", "Decision: B is inferior", "A is
# weaker, so B") is not read as a verdict for it, nor (when in doubt, no verdict) as one for the other: the
# whole reply then has no verdict of that kind and the judge is asked again.
_CLAUSE_END = re.compile(r"[.;,!?:\n(]|\]\]|\b(?i:because|since|but|so|although|though|while|whereas|than|and|"
                         r"whereby|which|who|hence|therefore|thus)\b")
_NEGATION = re.compile(r"(?i:\b(?:not|never|no|neither|nor|cannot|can't|won't|wouldn't|don't|doesn't|didn't|"
                       r"isn't|wasn't|shouldn't|couldn't|hardly|against|instead|rather|reject|rejects|avoid)\b|n't\b)")
_NEGATIVE = re.compile(r"(?i:\b(?:worse|worst|weaker|weakest|weak|inferior|wrong|incorrect|less|least|lacks?|"
                       r"lacking|fails?|failed|poorer|poorest|poor|loses|lost|bad|flawed|mistaken|misleading|"
                       r"inaccurate|unhelpful|incomplete|lower|lesser|behind|falls?|trails?)\b)")
_WINDOW_WORDS = 8  # how far a clause reaches from the verdict on either side


def _negated(reply: str, start: int, end: int, bracketed: bool = False) -> bool:
    """Whether the verdict at ``reply[start:end]`` sits in a negated clause (a negation before it) or one that
    states something negative about it (a negative predicate or a negation after it; not for a bracketed
    ``[[A]]``, which closes its own clause)."""
    before = reply[:start]
    cut = [m.end() for m in _CLAUSE_END.finditer(before)]
    before = " ".join(before[cut[-1] if cut else 0:].split()[-_WINDOW_WORDS:])
    after = "" if bracketed else reply[end:]
    stop = _CLAUSE_END.search(after)
    after = " ".join(after[: stop.start() if stop else len(after)].split()[:_WINDOW_WORDS])
    return bool(_NEGATION.search(before) or _NEGATION.search(after) or _NEGATIVE.search(after))


def _normalize(x: str) -> str:
    x = x.upper()
    return TIE if x == "C" or x.endswith(("TIE", "DRAW")) else x


def parse_verdict(reply: str | None) -> str | None:
    """'A', 'B', 'tie', or None when the reply names no verdict or names conflicting ones.

    Read strictly, in order of trust (the first kind found decides): ``[[A]]`` / ``[B]`` / ``[[C]]`` (C = tie);
    a label — ``Verdict: A``, ``The better response is Response B``, ``"best_output": "Output (a)"``, ``My verdict
    is a tie``; ``Output (a) is better`` / ``I prefer B`` / ``It's a tie``; a reply that is (or starts with) only
    ``A`` / ``**Output (b)**`` / ``Tie.``. Two different verdicts of the same kind are a conflict: None, never a
    guess; so is a verdict in a negated or negative clause ("Answer B is worse than A", "I would not choose B",
    "Decision: B is inferior"), and anything else (the judge is then asked again).
    """
    if not reply:
        return None
    reply = reply.strip()
    for level, pattern in enumerate(_LEVELS):
        matches = list(pattern.finditer(reply))
        if any(_negated(reply, m.start(), m.end(), bracketed=level == 0) for m in matches):
            return None  # "B is worse", "I would not choose B": never a verdict for B; in doubt, none at all
        found = {_normalize(next(g for g in m.groups() if g)) for m in matches}
        if len(found) == 1:
            return found.pop()
        if found:
            return None  # conflicting verdicts in one reply: do not pick one
    return None


def combine_orders(first: str | None, second: str | None) -> str:
    """Outcome for system X from two verdicts: ``first`` shows X as A, ``second`` shows X as B.

    'win' only when both prefer X, 'loss' only when both prefer the other, otherwise 'tie' (including an
    unparsed verdict, None).
    """
    x_first = {A: "x", B: "y"}.get(first or "")
    x_second = {A: "y", B: "x"}.get(second or "")
    if x_first == x_second == "x":
        return "win"
    if x_first == x_second == "y":
        return "loss"
    return "tie"


@dataclass
class Judgment:
    """One request (one order) and what came of it."""

    key: str
    verdict: str | None  # A / B / tie, or None when the reply never parsed
    replies: list[str]
    attempts: int  # HTTP requests made (0 when read from the cache)
    cached: bool = False


@dataclass
class PairOutcome:
    """Both orders of one pair: X shown first, then X shown second."""

    outcome: str  # win / loss / tie for X
    first: Judgment
    second: Judgment
    identical: bool = False  # X and Y were the same text: a tie, nothing asked

    @property
    def reason(self) -> str:
        v1, v2 = self.first.verdict, self.second.verdict
        if self.identical:
            return "identical"
        if self.outcome != "tie":
            return "agree"
        if v1 is None or v2 is None:
            return "unparsed"
        if v1 == TIE and v2 == TIE:
            return "both_tie"
        return "disagree"


OUTCOME_SIGN = {"win": 1, "loss": -1, "tie": 0}


def summarize_outcomes(outcomes: Sequence[PairOutcome], n_boot: int = 2000, seed: int = 0,
                       confidence: float = 0.95, clusters: Sequence | None = None) -> dict[str, Any]:
    """Counts; win rate = wins / (wins + losses) (None when every pair tied) and the paper's 100·wins/(wins+losses)
    (50 when none is decisive) with a bootstrap interval over prompts (one outcome per prompt), or over whole
    clusters when given (a question under several seeds is one draw, as in the win-rate matrix)."""

    signs = [OUTCOME_SIGN[o.outcome] for o in outcomes]
    wins, losses = signs.count(1), signs.count(-1)
    ties = len(outcomes) - wins - losses
    reasons = {r: sum(o.reason == r for o in outcomes) for r in ("disagree", "both_tie", "unparsed", "identical")}
    asked = [o for o in outcomes if not o.identical]
    replies = [j for o in asked for j in (o.first, o.second)]
    pct, low, high = win_rate_interval(signs, n_boot, seed, confidence, clusters)
    return {
        "pairs": len(outcomes),
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "decisive": wins + losses,
        "win_rate": wins / (wins + losses) if wins + losses else None,
        "win_rate_pct": pct,
        "pct_low": low,
        "pct_high": high,
        "ties_by_reason": reasons,
        "verdicts": len(replies),
        "verdicts_parsed": sum(j.verdict is not None for j in replies),
        "position_consistency": (sum(o.reason in ("agree", "both_tie") for o in asked) / len(asked)) if asked else None,
    }


class Judge:
    """Judges pairs of responses; thread-safe; every finished judgment goes to the cache at once."""

    def __init__(self, config: JudgeConfig, session: Any = None, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._session = session  # injected (tests) or one requests.Session per thread
        self._local = threading.local()
        self._sleep = sleep
        self._lock = threading.Lock()
        self.cache: dict[str, dict] = {}
        self.requests_made = 0
        self.unparsed = 0
        if config.cache_path:
            self.cache = self._read_cache(Path(config.cache_path))

    # -- cache ----------------------------------------------------------------------------------------------

    @staticmethod
    def _read_cache(path: Path) -> dict[str, dict]:
        cache: dict[str, dict] = {}
        if not path.exists():
            return cache
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key, verdict = entry["key"], entry["verdict"]
            except (json.JSONDecodeError, KeyError, TypeError):
                # a line cut short by an interrupted run: ignore it, that judgment is asked again
                log.warning("judge cache %s line %d is incomplete; that judgment will be asked again", path, lineno)
                continue
            if verdict in (A, B, TIE):  # an unparsed verdict (older caches kept them) is asked again
                cache[key] = entry
        return cache

    def _append(self, path: str | None, entry: dict) -> None:
        if not path:
            return
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, p.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def key(self, question: str, shown_a: str, shown_b: str) -> str:
        """Hash of model + instructions + decoding settings + question + both responses in the order shown."""
        cfg = self.config
        blob = json.dumps([cfg.model, _TEMPLATE_VERSION, cfg.temperature, cfg.max_tokens, question, shown_a, shown_b],
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    # -- one request ----------------------------------------------------------------------------------------

    @property
    def session(self):
        import requests

        if self._session is not None:
            return self._session
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.config.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _post(self, messages: list[dict]) -> str:
        """One chat completion with bounded retries; returns the reply text."""
        import requests

        cfg = self.config
        body = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                "max_tokens": cfg.max_tokens}
        last = ""
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                self._sleep(min(cfg.backoff * 2 ** (attempt - 1), cfg.max_backoff))
            with self._lock:
                self.requests_made += 1
            try:
                resp = self.session.post(self.url, json=body, headers=self._headers(), timeout=cfg.timeout)
            except requests.RequestException as e:
                last = f"{type(e).__name__}"  # the exception text may echo request details; keep the type
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code in (401, 403):
                raise AlarmError(
                    f"judge endpoint {redact_url(self.url)} refused the request (HTTP {resp.status_code}); put a valid API key "
                    f"in the environment variable {cfg.api_key_env} (or name another with --judge-api-key-env)"
                )
            if resp.status_code >= 400:
                detail = resp.text[:200].replace("\n", " ")
                raise AlarmError(
                    f"judge endpoint {redact_url(self.url)} rejected the request (HTTP {resp.status_code}: {detail}); "
                    f"check the base URL and that it serves the model {cfg.model!r}"
                )
            try:
                message = resp.json()["choices"][0]["message"]
                content = message.get("content")
                calls = message.get("tool_calls") or []
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                last = "a reply that is not an OpenAI chat completion"
                continue
            if isinstance(content, str) and content.strip():
                return content
            # a forced function call (the paper's print_best_model) answers in tool_calls, not in content
            fns = [c.get("function") or {} for c in calls if isinstance(c, dict)]
            return " ".join(f"{f.get('name', '')}({f.get('arguments', '')})" for f in fns) or ""
        raise AlarmError(
            f"judge endpoint {redact_url(self.url)} failed {cfg.max_retries + 1} times (last: {last}); check that the server "
            "is running and the URL ends in /v1 (finished judgments are cached: rerun to resume)"
        )

    def judge_once(self, question: str, shown_a: str, shown_b: str) -> Judgment:
        """One order. A cached judgment is returned as is; otherwise ask, re-ask on an unreadable reply."""
        key = self.key(question, shown_a, shown_b)
        with self._lock:
            hit = self.cache.get(key)
        if hit is not None:
            return Judgment(key, hit["verdict"], hit["replies"], 0, cached=True)
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": USER_TEMPLATE.format(question=question, a=shown_a, b=shown_b)}]
        replies: list[str] = []
        verdict = None
        for _ in range(self.config.parse_retries + 1):
            reply = self._post(messages)
            replies.append(reply)
            verdict = parse_verdict(reply)
            if verdict is not None:
                break
            messages = [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": REMINDER}]
        if verdict is None:
            with self._lock:
                self.unparsed += 1
            log.warning("judge reply did not parse after %d attempt(s); a tie this run, asked again next run: %r",
                        len(replies), replies[-1][:200])
            self._append(self.config.failures_path, {"key": key, "question": question[:500], "replies": replies})
        else:  # only a readable verdict is final; an unparsed one is asked again next run
            entry = {"key": key, "model": self.config.model, "verdict": verdict, "replies": replies}
            self._append(self.config.cache_path, entry)
            with self._lock:
                self.cache[key] = entry
        return Judgment(key, verdict, replies, len(replies))

    def _identical(self, question: str, x: str, y: str) -> PairOutcome | None:
        """The paper's rule: the same text on both sides is a tie, and the judge is not asked."""
        if x.strip() != y.strip():
            return None
        return PairOutcome("tie", Judgment(self.key(question, x, y), TIE, [], 0),
                           Judgment(self.key(question, y, x), TIE, [], 0), identical=True)

    def judge_pair(self, question: str, x: str, y: str) -> PairOutcome:
        """Both orders of (x, y); the outcome is for x."""
        same = self._identical(question, x, y)
        if same is not None:
            return same
        first = self.judge_once(question, x, y)
        second = self.judge_once(question, y, x)
        return PairOutcome(combine_orders(first.verdict, second.verdict), first, second)

    def judge_many(self, items: Sequence[tuple[str, str, str]], progress: str | None = None) -> list[PairOutcome]:
        """Judge (question, x, y) items with ``concurrency`` threads; each order is its own task.

        The first fatal error (e.g. a dead endpoint) cancels what has not started and is raised; everything
        finished before it is already in the cache.
        """
        same = [self._identical(*item) for item in items]
        tasks = [(q, a, b) for (q, x, y), s in zip(items, same) if s is None for a, b in ((x, y), (y, x))]
        results: list[Judgment | None] = [None] * len(tasks)
        abort = threading.Event()  # set on the first fatal error: queued tasks then return without a request

        def run(i: int) -> int:
            if not abort.is_set():
                try:
                    results[i] = self.judge_once(*tasks[i])
                except BaseException:
                    abort.set()
                    raise
            return i

        with Progress(progress or "", len(tasks), enabled=progress is not None) as bar, \
                ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            pending = {pool.submit(run, i) for i in range(len(tasks))}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise fut.exception()
                    bar.update(advance=1)
        asked = iter(range(0, len(tasks), 2))
        out = []
        for s in same:
            if s is None:
                i = next(asked)
                s = PairOutcome(combine_orders(results[i].verdict, results[i + 1].verdict), results[i], results[i + 1])
            out.append(s)
        return out

    def stats(self) -> dict[str, Any]:
        """Requests made, unparsed replies, cache size and the settings (the key's variable name, never the key)."""
        return {"requests": self.requests_made, "unparsed": self.unparsed, "cached_entries": len(self.cache),
                **asdict(self.config), "base_url": redact_url(self.config.base_url)}

