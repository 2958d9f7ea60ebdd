"""A sequence-level reward from a reward model served over HTTP (vLLM, TEI, OpenRLHF, or a plain JSON API).

Why: with several training processes each would otherwise load its own copy of a 7B–70B reward model; one
served copy (``vllm serve RM --runner pooling``, TEI, ``alarm serve-reward``, OpenRLHF's ``serve_rm``) serves
every rank, and the reward model gets its own GPUs. In a recipe::

    holistic: {type: remote, url: "http://127.0.0.1:8000", api: vllm_pooling, model: my-rm,
               template: "<|user|>{prompt}<|assistant|>{completion}", api_key_env: RM_API_KEY}

``api`` (request → what is read from the answer):

| api | POST (default path) | body | score |
|---|---|---|---|
| ``plain`` | the url as given | ``{"prompts", "completions", <columns>}`` | ``scores`` (or ``rewards``) list |
| ``openrlhf`` | ``/get_reward`` | ``{"query": text, "prompts", "labels": <first of columns>}`` | ``rewards`` list |
| ``vllm_pooling`` | ``/pooling`` | ``{"model", "input": [text]}`` | ``data[i].data``: its last row's ``label_index`` |
| ``vllm_classify`` | ``/classify`` | ``{"model", "input": [text]}`` | ``data[i].probs[label_index]`` |
| ``tei_predict`` | ``/predict`` | ``{"inputs": [[prompt, completion]], "raw_scores": true}`` | the entry of ``label`` |
| ``tei_rerank`` | ``/rerank`` | ``{"query": prompt, "texts": [completion], "raw_scores": true}`` | ``score`` by ``index`` |

``text`` is ``template`` filled in (``{prompt}``, ``{completion}``), or prompt + completion without one.
Requests carry ``batch_size`` responses each; a failed request (no connection, timeout, HTTP 429/5xx) is
retried ``retries`` times with exponential backoff, then raises :class:`AlarmError` naming the server. An API
key is read only from the environment variable named by ``api_key_env`` and sent as a bearer token; it is
never logged or shown.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from urllib.parse import urlsplit

from alarm.errors import AlarmError, redact_url
from alarm.rewards.base import check_batch

APIS = {"plain": "", "openrlhf": "/get_reward", "vllm_pooling": "/pooling", "vllm_classify": "/classify",
        "tei_predict": "/predict", "tei_rerank": "/rerank"}


def _first_line(text: str, limit: int = 200) -> str:
    text = (text or "").strip()
    return (text.splitlines()[0] if text else "")[:limit]


def post_json(session, endpoint: str, body: dict, timeout: float, retries: int, backoff: float, who: str,
              counter=None):
    """POST ``body`` as JSON and return the decoded answer. Connection failures, timeouts and HTTP 429/5xx
    are retried with exponential backoff; a 4xx answer or invalid JSON raises at once (retrying cannot help).
    Every failure is one :class:`AlarmError` line naming the server, never the request headers."""
    import requests

    attempts = 1 + retries
    problem = ""
    for attempt in range(attempts):
        if counter is not None:
            counter.requests_sent += 1
        try:
            resp = session.post(endpoint, json=body, timeout=timeout)
        except requests.Timeout:
            problem = f"no answer within {timeout:g} s"
        except requests.ConnectionError:
            problem = "cannot connect"
        else:
            if resp.status_code == 429 or resp.status_code >= 500:
                problem = f"HTTP {resp.status_code} {_first_line(resp.text, 120)}".rstrip()
            elif resp.status_code >= 400:
                raise AlarmError(f"{who}: {redact_url(endpoint)} rejected the request: HTTP {resp.status_code} "
                                 f"{_first_line(resp.text)}")
            else:
                try:
                    return resp.json()
                except ValueError:
                    raise AlarmError(f"{who}: {redact_url(endpoint)} answered with invalid JSON: {resp.text[:120]!r}") from None
        if attempt + 1 < attempts:
            time.sleep(backoff * 2**attempt)
    raise AlarmError(f"{who}: server {redact_url(endpoint)} failed after {attempts} attempts ({problem}); start it or fix "
                     "the url (or raise the timeout)")


class RemoteReward:
    """Scores (prompt, completion) pairs with a served reward model; see the module docstring."""

    dense = False

    def __init__(self, url: str, api: str = "plain", model: str | None = None, template: str | None = None,
                 label_index: int = 0, label: str | None = None, batch_size: int = 32, timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, api_key_env: str | None = None,
                 columns: Sequence[str] = (), name: str = "remote", higher_is_better: bool = True):
        import requests

        if api not in APIS:
            raise AlarmError(f"reward {name!r}: api {api!r} is unknown; use one of {', '.join(APIS)}")
        parts = urlsplit(str(url or ""))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AlarmError(f"reward {name!r}: url must look like http://host:port[/path], got {redact_url(url)!r}")
        if api == "plain" and parts.path in ("", "/"):
            raise AlarmError(f"reward {name!r}: api 'plain' needs the full endpoint in url (e.g. http://host:8000/score)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise AlarmError(f"reward {name!r}: batch_size must be a positive integer, got {batch_size!r}")
        if not (timeout > 0 and retries >= 0 and backoff >= 0):
            raise AlarmError(f"reward {name!r}: timeout must be > 0, retries and backoff ≥ 0")
        if template is not None and "{completion}" not in template:
            raise AlarmError(f"reward {name!r}: template must contain '{{completion}}', got {template!r}")
        self.endpoint = str(url).rstrip("/") + (APIS[api] if parts.path in ("", "/") else "")
        self.api, self.model, self.template = api, model, template
        self.label_index, self.label = int(label_index), label
        self.batch_size, self.timeout, self.retries, self.backoff = batch_size, float(timeout), int(retries), float(backoff)
        self.columns = tuple(columns)
        self.name, self.higher_is_better = name, higher_is_better
        self.session = requests.Session()
        self.session.headers.update({"Content-Type": "application/json", "Accept": "application/json"})
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise AlarmError(f"reward {name!r}: environment variable {api_key_env} (api_key_env) is not set; "
                                 "export the API key there (keys are never read from configs)")
            self.session.headers["Authorization"] = f"Bearer {key}"
            if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
                warnings.warn(f"reward {name!r}: the API key goes to {parts.hostname} over plain http", stacklevel=2)
        self.requests_sent = 0  # for logs and tests: how many HTTP requests the batches took

    def __repr__(self) -> str:  # never show the session headers (the key)
        return f"RemoteReward(name={self.name!r}, api={self.api!r}, endpoint={redact_url(self.endpoint)!r})"

    # -- HTTP -----------------------------------------------------------------------------------------

    def _post(self, body: dict):
        return post_json(self.session, self.endpoint, body, self.timeout, self.retries, self.backoff,
                         who=f"reward {self.name!r}", counter=self)

    # -- one API each -----------------------------------------------------------------------------------

    def text(self, prompt: str, completion: str) -> str:
        if self.template is None:
            return prompt + completion
        head, tail = self.template.split("{completion}", 1)
        return head.replace("{prompt}", prompt) + completion + tail.replace("{prompt}", prompt)

    def _bad(self, what: str) -> AlarmError:
        return AlarmError(f"reward {self.name!r}: {redact_url(self.endpoint)} ({self.api}) answered {what}")

    def _pick(self, row) -> float:
        """One number from a pooling output: a scalar, a vector (label_index), or per-token rows (the last)."""
        while isinstance(row, list) and row and isinstance(row[-1], list):
            row = row[-1]
        if isinstance(row, list):
            if not row or self.label_index >= len(row):
                raise self._bad(f"a vector of {len(row)} values; label_index {self.label_index} is out of range")
            row = row[self.label_index]
        if not isinstance(row, (int, float)):
            raise self._bad(f"{type(row).__name__} where a number was expected")
        return float(row)

    def _indexed(self, payload, n: int, value) -> list[float]:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != n:
            raise self._bad(f"no 'data' list of {n} entries")
        out: list[float | None] = [None] * n
        for j, item in enumerate(data):
            i = item.get("index", j) if isinstance(item, dict) else j
            if not isinstance(i, int) or not 0 <= i < n:
                raise self._bad(f"an entry with index {i!r}")
            out[i] = value(item)
        return out

    def _chunk(self, prompts: list[str], completions: list[str], columns: dict) -> list[float]:
        n = len(completions)
        if self.api == "plain":
            body = {"prompts": prompts, "completions": completions, **columns}
            payload = self._post(body)
            scores = payload if isinstance(payload, list) else (
                payload.get("scores", payload.get("rewards")) if isinstance(payload, dict) else None)
        elif self.api == "openrlhf":
            body = {"query": [self.text(p, c) for p, c in zip(prompts, completions)], "prompts": prompts,
                    "labels": columns.get(self.columns[0]) if self.columns else None}
            payload = self._post(body)
            scores = payload.get("rewards") if isinstance(payload, dict) else None
        elif self.api in ("vllm_pooling", "vllm_classify"):
            body = {"input": [self.text(p, c) for p, c in zip(prompts, completions)]}
            if self.model:
                body["model"] = self.model
            payload = self._post(body)
            if self.api == "vllm_pooling":
                scores = self._indexed(payload, n, lambda item: self._pick(item.get("data")))
            else:
                scores = self._indexed(payload, n, lambda item: self._pick(item.get("probs")))
        elif self.api == "tei_predict":
            inputs = [[p, c] for p, c in zip(prompts, completions)] if self.template is None \
                else [self.text(p, c) for p, c in zip(prompts, completions)]
            payload = self._post({"inputs": inputs, "raw_scores": True})
            if not isinstance(payload, list) or len(payload) != n:
                raise self._bad(f"no list of {n} predictions")
            scores = [self._tei_label(row) for row in payload]
        else:  # tei_rerank: one request per prompt, its completions as the texts
            scores = [None] * n
            groups: dict[str, list[int]] = {}
            for i, p in enumerate(prompts):
                groups.setdefault(p, []).append(i)
            for p, idx in groups.items():
                payload = self._post({"query": p, "texts": [completions[i] for i in idx], "raw_scores": True})
                if not isinstance(payload, list) or len(payload) != len(idx):
                    raise self._bad(f"no list of {len(idx)} rerank results")
                for item in payload:
                    j = item.get("index") if isinstance(item, dict) else None
                    if not isinstance(j, int) or not 0 <= j < len(idx):
                        raise self._bad(f"a rerank result with index {j!r}")
                    scores[idx[j]] = self._pick(item.get("score"))
        if not isinstance(scores, list) or len(scores) != n:
            raise self._bad(f"{type(scores).__name__} where a list of {n} scores was expected")
        return scores

    def _tei_label(self, row) -> float:
        if isinstance(row, dict):
            row = [row]
        if not isinstance(row, list) or not row or not all(isinstance(x, dict) and "score" in x for x in row):
            raise self._bad("a prediction without scores")
        if self.label is not None:
            hit = [x for x in row if x.get("label") == self.label]
            if not hit:
                raise self._bad(f"no label {self.label!r} (labels: {[x.get('label') for x in row]})")
            return self._pick(hit[0]["score"])
        if len(row) == 1:
            return self._pick(row[0]["score"])
        want = f"LABEL_{self.label_index}"
        hit = [x for x in row if x.get("label") == want]
        if not hit:
            raise self._bad(f"{len(row)} labels {[x.get('label') for x in row]}; set `label` to the one to read")
        return self._pick(hit[0]["score"])

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        check_batch(self.name, prompts, completions)
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise AlarmError(f"reward {self.name!r} sends the column {missing[0]!r} but the batch has none "
                             f"(columns: {sorted(columns) or 'none'})")
        out: list[float | None] = []
        for k in range(0, len(completions), self.batch_size):
            sl = slice(k, k + self.batch_size)
            cols = {c: list(columns[c])[sl] for c in self.columns}
            out.extend(self._chunk(list(prompts[sl]), list(completions[sl]), cols))
        return out


__all__ = ["APIS", "RemoteReward", "post_json"]
