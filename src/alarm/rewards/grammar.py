"""Grammar reward, token-level: every generated token overlapping an error gets ``error_value``, the rest
``clean_value`` (docs/method.md §3, MT; the paper used LanguageTool and −1 on tokens inside a match).

Two checkers, same output (character spans of errors):

- **LanguageTool** over HTTP (``POST <url>/v2/check``), when a server URL is configured (argument ``url`` or
  the environment variable ``ALARM_LANGUAGETOOL_URL``). Bounded retries with exponential backoff and a
  per-request timeout; when the server is down or too slow the reward raises :class:`AlarmError` — it never
  returns a silent zero. LanguageTool is a Java server; start one with
  ``java -cp languagetool-server.jar org.languagetool.server.HTTPServer --port 8081`` and set
  ``url: http://localhost:8081``.
- **Offline spelling** (``pyspellchecker``, pure Python with an English word list), when no server is
  configured: each misspelt word is an error span. It finds spelling errors only, not grammar. British
  spellings (favour, organise, centre, programme) count as correct; capitalised words (names) are skipped
  unless ``check_capitalized``; add domain words with ``extra_words`` / ``word_files``.

The reward returns :class:`alarm.rewards.base.Dense` spans (``level="token"``) and
:mod:`alarm.placement` maps them onto the generated tokens. Which checker is used is in ``reward.checker``
and logged once. With shaping on (the default), keep ``clean_value > error_value`` so a clean token earns more
than an erroneous one after the logistic; the sum over tokens grows with length (see docs/method.md §2.2).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from alarm.errors import AlarmError, redact_url
from alarm.rewards.base import Dense, check_batch

logger = logging.getLogger(__name__)

URL_ENV = "ALARM_LANGUAGETOOL_URL"
API_KEY_ENV = "ALARM_LANGUAGETOOL_API_KEY"  # LanguageTool Premium: key and username only from the environment
USERNAME_ENV = "ALARM_LANGUAGETOOL_USERNAME"


@dataclass(frozen=True)
class Match:
    """One error: characters ``[start, end)`` of the checked text (Python string indices)."""

    start: int
    end: int
    rule: str
    message: str = ""
    category: str = ""


# ------------------------------------------------------------------------------------------- LanguageTool


def utf16_to_index(text: str) -> list[int]:
    """``table[k]`` = Python index of the character at UTF-16 offset ``k`` (LanguageTool counts in UTF-16,
    like Java; characters outside the BMP, e.g. emoji, take two units). ``table[len16]`` = ``len(text)``."""
    table: list[int] = []
    for i, ch in enumerate(text):
        table.extend([i] * (2 if ord(ch) > 0xFFFF else 1))
    table.append(len(text))
    return table


def parse_matches(text: str, payload) -> list[Match]:
    """Matches of a ``/v2/check`` JSON answer, with offsets converted to Python indices and checked."""
    if not isinstance(payload, dict) or not isinstance(payload.get("matches"), list):
        raise AlarmError("LanguageTool answered without a 'matches' list; is the URL a LanguageTool server?")
    table = utf16_to_index(text)
    out = []
    for m in payload["matches"]:
        try:
            off, length = int(m["offset"]), int(m["length"])
        except (KeyError, TypeError, ValueError):
            raise AlarmError(f"LanguageTool match without integer offset/length: {str(m)[:200]}") from None
        if off < 0 or length < 0 or off + length > len(table) - 1:
            raise AlarmError(
                f"LanguageTool match [{off}, {off + length}) lies outside the checked text "
                f"({len(table) - 1} UTF-16 units); the server checked a different text"
            )
        rule = m.get("rule") or {}
        out.append(Match(table[off], table[off + length], str(rule.get("id", "")), str(m.get("message", "")),
                         str((rule.get("category") or {}).get("id", ""))))
    return out


class LanguageToolClient:
    """Talks to one LanguageTool server. ``check(text)`` returns its matches or raises :class:`AlarmError`."""

    def __init__(self, url: str, language: str = "en-US", timeout: float = 10.0, retries: int = 2,
                 backoff: float = 0.5, disabled_rules: Sequence[str] = (), disabled_categories: Sequence[str] = (),
                 level: str = "default"):
        if not url or not str(url).startswith(("http://", "https://")):
            raise AlarmError(f"LanguageTool url must start with http:// or https://, got {redact_url(url)!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise AlarmError("LanguageTool timeout must be > 0, retries and backoff ≥ 0")
        if level not in ("default", "picky"):
            raise AlarmError(f"LanguageTool level must be 'default' or 'picky', got {level!r}")
        self.url = str(url).rstrip("/")
        self.endpoint = self.url if self.url.endswith("/v2/check") else self.url + "/v2/check"
        self.language = language
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.form = {"language": language, "level": level}
        if disabled_rules:
            self.form["disabledRules"] = ",".join(disabled_rules)
        if disabled_categories:
            self.form["disabledCategories"] = ",".join(disabled_categories)
        if os.environ.get(API_KEY_ENV):
            self.form["apiKey"] = os.environ[API_KEY_ENV]
            self.form["username"] = os.environ.get(USERNAME_ENV, "")

    def _post(self, text: str) -> bytes:
        data = urllib.parse.urlencode({**self.form, "text": text}).encode()
        req = urllib.request.Request(self.endpoint, data=data, method="POST",
                                     headers={"Accept": "application/json",
                                              "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return resp.read()

    def check(self, text: str) -> list[Match]:
        attempts = 1 + self.retries
        problem = ""
        for attempt in range(attempts):
            try:
                body = self._post(text)
                try:
                    payload = json.loads(body)
                except ValueError:
                    raise AlarmError(f"LanguageTool at {self.endpoint} answered with invalid JSON: "
                                     f"{body[:120]!r}") from None
                return parse_matches(text, payload)
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:  # our request is wrong: retrying will not help
                    detail = e.read()[:200].decode("utf-8", "replace").strip()
                    raise AlarmError(f"LanguageTool at {self.endpoint} rejected the request: HTTP {e.code} "
                                     f"{detail} (check `language`, `disabled_rules`)") from None
                problem = f"HTTP {e.code}"
            except TimeoutError:
                problem = f"no answer within {self.timeout:g} s"
            except urllib.error.URLError as e:
                reason = e.reason
                problem = f"no answer within {self.timeout:g} s" if isinstance(reason, TimeoutError) \
                    else f"cannot connect ({reason})"
            except (ConnectionError, http.client.HTTPException) as e:
                problem = f"connection failed ({type(e).__name__}: {e})"
            if attempt + 1 < attempts:
                time.sleep(self.backoff * 2**attempt)
        raise AlarmError(
            f"LanguageTool server {redact_url(self.url)} failed after {attempts} attempts: {problem}. Start the server "
            f"(or raise `timeout`), or remove `url` (and {URL_ENV}) to use the offline spelling checker"
        )


# ------------------------------------------------------------------------------------------- offline spelling

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_BRITISH = [("isation", "ization"), ("ised", "ized"), ("ising", "izing"), ("ise", "ize"), ("ises", "izes"),
            ("yse", "yze"), ("ysed", "yzed"), ("our", "or"), ("ours", "ors"), ("tre", "ter"), ("tres", "ters"),
            ("mme", "m"), ("mmes", "ms"), ("ogue", "og"), ("ogues", "ogs"), ("ence", "ense"),
            ("lled", "led"), ("lling", "ling"), ("eable", "able")]
_BUILTIN_WORDS = ("maths", "fulfil", "fulfils", "enrol", "enrols", "whilst", "amongst", "tyre", "tyres", "kerb",
                  "grey", "ageing", "judgement", "cheque", "cheques", "aluminium", "practise", "practised")


class SpellingChecker:
    """Offline English spelling checker (``pyspellchecker``); each unknown word is one :class:`Match`."""

    def __init__(self, language: str = "en", extra_words: Iterable[str] = (), word_files: Iterable[str] = (),
                 check_capitalized: bool = False, british: bool = True):
        try:
            from spellchecker import SpellChecker
        except ImportError:
            raise AlarmError("the offline grammar checker needs pyspellchecker: `pip install pyspellchecker`, "
                             "or configure a LanguageTool server url") from None
        try:
            self.spell = SpellChecker(language=language, case_sensitive=False)
        except ValueError as e:
            raise AlarmError(f"pyspellchecker has no dictionary for language {language!r} ({e})") from None
        words = {w.lower() for w in (*_BUILTIN_WORDS, *extra_words)}
        for f in word_files:
            try:
                words |= {w.strip().lower() for w in Path(f).read_text(encoding="utf-8").split() if w.strip()}
            except OSError as e:
                raise AlarmError(f"cannot read word list {f}: {e.strerror or e}") from None
        self.extra = words
        self.check_capitalized = check_capitalized
        self.british = british
        self.language = language
        self._cache: dict[str, bool] = {}

    def _known(self, word: str) -> bool:
        w = word.lower().replace("’", "'")
        if w in self._cache:
            return self._cache[w]
        candidates = [w]
        if w.endswith("'s"):
            candidates.append(w[:-2])
        if self.british:
            candidates += [c[: -len(gb)] + us for c in list(candidates) for gb, us in _BRITISH if c.endswith(gb)]
        ok = any(c in self.extra for c in candidates) or bool(self.spell.known(candidates))
        self._cache[w] = ok
        return ok

    def check(self, text: str) -> list[Match]:
        out = []
        for m in _WORD.finditer(text):
            word = m.group()
            if len(word) == 1 or sum(c.isupper() for c in word) >= 2:  # single letters, acronyms (EU, MEPs)
                continue
            if word[0].isupper() and not self.check_capitalized:  # names: an English word list cannot know them
                continue
            if not self._known(word):
                out.append(Match(m.start(), m.end(), "SPELLING", f"possible spelling mistake: {word!r}", "TYPOS"))
        return out


# ------------------------------------------------------------------------------------------- the reward


class GrammarReward:
    """Token-level grammar reward: ``error_value`` on tokens overlapping an error, ``clean_value`` elsewhere.

    ``checker``: ``"auto"`` (LanguageTool if a URL is configured, else offline spelling), ``"languagetool"``
    or ``"spelling"``. LanguageTool settings: ``url`` (else ``$ALARM_LANGUAGETOOL_URL``), ``language``,
    ``timeout`` (s per request), ``retries``, ``backoff`` (s, doubled per retry), ``concurrency`` (parallel
    requests), ``disabled_rules``, ``disabled_categories``, ``level``. Offline settings: ``extra_words``,
    ``word_files``, ``check_capitalized``.
    """

    higher_is_better = True
    dense = True

    def __init__(self, checker: str = "auto", url: str | None = None, language: str = "en-US",
                 error_value: float = -1.0, clean_value: float = 0.0, timeout: float = 10.0, retries: int = 2,
                 backoff: float = 0.5, concurrency: int = 4, disabled_rules: Sequence[str] = (),
                 disabled_categories: Sequence[str] = (), level: str = "default", extra_words: Sequence[str] = (),
                 word_files: Sequence[str] = (), check_capitalized: bool = False, name: str = "grammar"):
        if checker not in ("auto", "languagetool", "spelling"):
            raise AlarmError(f"grammar checker {checker!r} is unknown; use 'auto', 'languagetool' or 'spelling'")
        if not clean_value > error_value:
            raise AlarmError(f"grammar: clean_value ({clean_value}) must exceed error_value ({error_value})")
        if concurrency < 1:
            raise AlarmError("grammar: concurrency must be ≥ 1")
        url = url or os.environ.get(URL_ENV) or None
        if checker == "languagetool" and not url:
            raise AlarmError(f"grammar checker 'languagetool' needs a server: set `url` or {URL_ENV}")
        self.name = name
        self.error_value = float(error_value)
        self.clean_value = float(clean_value)
        self.concurrency = concurrency
        if checker == "languagetool" or (checker == "auto" and url):
            self.backend = LanguageToolClient(url, language, timeout, retries, backoff, disabled_rules,
                                              disabled_categories, level)
            self.checker = f"languagetool ({redact_url(self.backend.url)}, {language})"
        else:
            lang = language.split("-")[0].lower()
            self.backend = SpellingChecker(lang, extra_words, word_files, check_capitalized)
            self.checker = f"pyspellchecker ({lang}, spelling errors only)"
        self._announced = False
        self.last_error_counts: list[int] = []

    def _announce(self) -> None:
        if not self._announced:
            self._announced = True
            if isinstance(self.backend, SpellingChecker):
                logger.warning("reward %r: no LanguageTool server configured; using the offline checker %s",
                               self.name, self.checker)
            else:
                logger.warning("reward %r: using %s", self.name, self.checker)

    def matches(self, completions: Sequence[str]) -> list[list[Match]]:
        """Errors of each completion (identical texts are checked once)."""
        unique = sorted({c for c in completions if c.strip()})
        if self.concurrency > 1 and len(unique) > 1 and isinstance(self.backend, LanguageToolClient):
            with ThreadPoolExecutor(self.concurrency) as pool:
                found = dict(zip(unique, pool.map(self.backend.check, unique)))
        else:
            found = {c: self.backend.check(c) for c in unique}
        return [found.get(c, []) for c in completions]

    def __call__(self, prompts, completions, **columns) -> list[Dense | None]:
        check_batch(self.name, prompts, completions)
        self._announce()
        per_text = self.matches(completions)
        self.last_error_counts = [len(m) for m in per_text]
        out: list[Dense | None] = []
        for c, ms in zip(completions, per_text):
            if not c.strip():
                out.append(None)  # nothing to check; the combination's empty-response penalty applies
                continue
            spans = tuple((m.start, m.end, self.error_value) for m in ms if m.end > m.start)
            out.append(Dense(spans=spans, default=self.clean_value, level="token"))
        return out


__all__ = ["GrammarReward", "LanguageToolClient", "Match", "SpellingChecker", "parse_matches", "utf16_to_index"]
