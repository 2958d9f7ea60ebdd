"""``alarm serve-reward``: a recipe's combined reward over HTTP, in OpenRLHF's remote reward contract.

    alarm serve-reward --run runs/qa --port 5000        # recipe, normalisers, ε and kept aspects of a run
    # OpenRLHF:  --reward.remote_url http://127.0.0.1:5000/get_reward   (its remote_rm_url)

POST ``/get_reward`` with ``{"query": [prompt + response, ...], "prompts": [...], "labels": [...]}`` (the body
OpenRLHF sends) and get ``{"rewards": [R, ...], "scores": [R, ...], "extra_logs": {"gate_open": [...],
"holistic_z": [...], ...}}``. The response is what follows the prompt in the query. A client that cut an
over-long prompt from the left (OpenRLHF does) sends a query that starts with the prompt's end only: the
response then follows the longest end of the prompt the query starts with (``extra_logs["prompt_truncated"]``
says so). Or send the responses themselves as ``"responses"``. The policy's end-of-turn / end-of-sequence
tokens at the end of a response (``<|im_end|>``, ``</s>``, ...: OpenRLHF decodes with them) are removed
before scoring (``--end-tokens``), so a response scores as it does in ``alarm score``. A label that is a
string fills the column ``--label-column`` (default ``reference``); a label that is an object gives its
keys as columns (``question`` replaces the prompt the rewards read, as in our PPO). ``GET /health`` says
what is served and counts requests.

Why a server: one copy of the reward models (on the GPU you choose) serves every rank of every trainer,
instead of one copy per process. Concurrent requests are merged into one scoring pass (up to
``--max-batch`` responses, waiting at most ``--max-wait-ms`` for company), so clients that send one sample
per request (OpenRLHF, verl's ``naive`` manager) are scored in batches; at most ``--max-queue`` requests
wait, later ones get HTTP 503 (OpenRLHF retries). A malformed body gets HTTP 400 with a one-line message and
nothing else is affected; bodies over ``--max-body-mb`` get 413; a client that stalls for
``--socket-timeout`` seconds is disconnected; a response longer than ``--max-response-chars`` is scored on
its first that many characters (``extra_logs["response_clipped"]``), so one huge response cannot hold up
the others. No reward leaves as ``null`` or NaN: a response that cannot be scored is an HTTP 400 naming it,
or, with ``--fallback-reward X``, gets X (logged, ``extra_logs["fallback"]``). The server binds 127.0.0.1
unless ``--host`` says otherwise; it has no authentication, so expose it only on a trusted network.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alarm.combine import RewardSet, ScoredSequences
from alarm.errors import AlarmError
from alarm.integrations.run_rewards import fitted_reward_set, score_for_engine


class BadRequest(Exception):
    """The request body is not what the contract says (HTTP 400)."""


@dataclass
class Job:
    prompts: list[str]  # what the rewards read as the prompt
    completions: list[str]
    columns: list[dict]  # one dict per response
    truncated: list[bool] = field(default_factory=list)  # the query held only the end of its prompt
    clipped: list[bool] = field(default_factory=list)  # scored on its first max_response_chars characters
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: tuple[int, str] | None = None


def _strings(body: dict, key: str, n: int | None = None) -> list[str]:
    v = body.get(key)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRequest(f"'{key}' must be a list of strings")
    if n is not None and len(v) != n:
        raise BadRequest(f"'{key}' has {len(v)} entries for {n} queries")
    return v


# The end-of-turn / end-of-sequence tokens of common chat templates (Qwen, SmolLM2, Llama 3, Mistral, Gemma,
# Phi, gpt-oss). A client that decodes with special tokens (OpenRLHF) leaves one at the end of a response.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "</s>",
              "<end_of_turn>", "<eos>", "<|end|>", "<|return|>")


def strip_end_tokens(text: str, tokens=END_TOKENS) -> str:
    """``text`` without the end tokens (and the whitespace between them) at its end; other text unchanged."""
    while tokens:
        rest = text.rstrip()
        tok = next((t for t in tokens if t and rest.endswith(t)), None)
        if tok is None:
            return text
        text = rest[:-len(tok)]
    return text


def suffix_overlap(prompt: str, query: str) -> int:
    """The length of the longest end of ``prompt`` that ``query`` starts with (linear time: KMP)."""
    pat = query[:len(prompt)]
    if not pat:
        return 0
    fail, k = [0] * len(pat), 0
    for i in range(1, len(pat)):
        while k and pat[i] != pat[k]:
            k = fail[k - 1]
        if pat[i] == pat[k]:
            k += 1
        fail[i] = k
    k = 0
    for ch in prompt:
        while k and (k == len(pat) or ch != pat[k]):
            k = fail[k - 1]
        if k < len(pat) and ch == pat[k]:
            k += 1
    return k


def split_query(query: str, prompt: str) -> tuple[str, bool]:
    """The response in ``query`` and whether the prompt had been cut from the left (by a client that keeps
    the end of an over-long prompt); ``None`` when the query starts with no end of the prompt."""
    if query.startswith(prompt):
        return query[len(prompt):], False
    # A cut through a multi-byte character decodes as U+FFFD at the start of the query.
    lead = len(query) - len(query.lstrip("\ufffd"))
    k = suffix_overlap(prompt, query[lead:])
    if k == 0:
        return None, False
    return query[lead + k:], True


def parse_request(body, label_column: str = "reference", end_tokens=END_TOKENS,
                  max_chars: int | None = None) -> Job:
    """A :class:`Job` from an OpenRLHF-style body, or :class:`BadRequest` naming the first problem."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with 'query' (and 'prompts', 'labels')")
    if "query" not in body and "responses" not in body:
        raise BadRequest("the body needs 'query': a list of prompt + response strings")
    n = len(body["query"]) if isinstance(body.get("query"), list) else None
    queries = _strings(body, "query", n) if "query" in body else None
    n = len(queries) if queries is not None else len(_strings(body, "responses"))
    if n == 0:
        raise BadRequest("'query' is empty; send at least one response")
    prompts = _strings(body, "prompts", n) if body.get("prompts") is not None else None
    truncated = [False] * n
    if "responses" in body:
        completions = _strings(body, "responses", n)
    elif prompts is None:
        raise BadRequest("'prompts' is missing: it is needed to cut each response out of its query (or send "
                         "'responses')")
    else:
        completions = []
        for i, (q, p) in enumerate(zip(queries, prompts)):
            response, truncated[i] = split_query(q, p)
            if response is None:
                raise BadRequest(f"query {i} starts neither with prompt {i} nor with an end of it; send the "
                                 "responses as 'responses'")
            completions.append(response)
    if end_tokens:
        completions = [strip_end_tokens(c, end_tokens) for c in completions]
    clipped = [bool(max_chars) and len(c) > max_chars for c in completions]
    if any(clipped):
        completions = [c[:max_chars] if cut else c for c, cut in zip(completions, clipped)]
    labels = body.get("labels")
    if labels is None:
        labels = [None] * n
    if not isinstance(labels, list) or len(labels) != n:
        raise BadRequest(f"'labels' must be a list with one entry per query ({n})")
    columns, reward_prompts = [], []
    for i, label in enumerate(labels):
        if isinstance(label, dict):
            cols = dict(label)
        elif label is None or isinstance(label, (str, int, float, list)):
            cols = {label_column: label} if label is not None else {}
        else:
            raise BadRequest(f"label {i} is a {type(label).__name__}; use a string or an object of columns")
        question = cols.pop("question", None)
        base = prompts[i] if prompts is not None else ""
        if question is not None and not isinstance(question, str):
            raise BadRequest(f"label {i}: 'question' must be a string")
        reward_prompts.append(question if question is not None else base)
        columns.append(cols)
    return Job(reward_prompts, completions, columns, truncated, clipped)


def _finite(xs) -> list[float]:
    """Numbers for OpenRLHF's extra_logs (it makes tensors of them): None and NaN become 0."""
    return [0.0 if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x) for x in xs]


def log_keys(reward_set: RewardSet) -> list[str]:
    """The extra_logs keys of every answer: the same for every response (OpenRLHF stacks them)."""
    return ["return", "gate_open", "holistic_part", "aspect_part", "holistic_z",
            *(f"aspect/{k}" for k in reward_set.aspects), "prompt_truncated", "response_clipped", "fallback"]


def response_body(result: ScoredSequences, keys: list[str] | None = None, flags: dict | None = None) -> dict:
    n = len(result.returns)
    logs = {**result.per_sample(), **(flags or {})}
    keys = keys or list(logs)
    return {"rewards": list(result.returns), "scores": list(result.returns),
            "extra_logs": {k: _finite(logs.get(k, [0.0] * n)) for k in keys}}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops connections when dozens of clients connect at once


class RewardServer:
    """The HTTP server and its batching worker. ``start()`` serves in a background thread (tests, notebooks);
    ``serve_forever()`` blocks (the command)."""

    def __init__(self, reward_set: RewardSet, host: str = "127.0.0.1", port: int = 5000, max_batch: int = 64,
                 max_wait_ms: float = 10.0, max_queue: int = 64, label_column: str = "reference",
                 max_body_mb: float = 4.0, request_timeout: float = 600.0, socket_timeout: float = 30.0,
                 end_tokens=END_TOKENS, max_response_chars: int | None = 65536, fallback: float | None = None,
                 log=None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0 or request_timeout <= 0:
            raise AlarmError("serve-reward: --max-batch and --max-queue must be ≥ 1, --max-wait-ms ≥ 0")
        if max_body_mb <= 0 or socket_timeout <= 0 or (max_response_chars is not None and max_response_chars < 0):
            raise AlarmError("serve-reward: --max-body-mb and --socket-timeout must be > 0, --max-response-chars ≥ 0")
        if fallback is not None and not math.isfinite(float(fallback)):
            raise AlarmError(f"serve-reward: --fallback-reward must be a finite number, got {fallback}")
        self.reward_set = reward_set
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1000.0
        self.label_column = label_column
        self.max_body = int(max_body_mb * 2**20)
        self.request_timeout = float(request_timeout)
        self.socket_timeout = float(socket_timeout)
        self.end_tokens = tuple(end_tokens or ())
        self.max_chars = int(max_response_chars) if max_response_chars else None
        self.fallback = None if fallback is None else float(fallback)
        self.keys = log_keys(reward_set)
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=int(max_queue))
        self.stats = {"requests": 0, "responses": 0, "batches": 0, "rejected_busy": 0, "bad_requests": 0,
                      "truncated_prompts": 0, "clipped_responses": 0, "fallbacks": 0}
        self._stats_lock = threading.Lock()
        self.log = log or (lambda msg: print(f"[alarm serve-reward] {msg}", file=sys.stderr, flush=True))
        self._stop = threading.Event()
        try:
            self.httpd = _HTTPServer((host, port), self._handler_class())
        except OSError as e:
            raise AlarmError(f"serve-reward: cannot listen on {host}:{port} ({e.strerror or e}); pick another "
                             "--port or --host") from None
        self.httpd.daemon_threads = True
        self.worker = threading.Thread(target=self._work, name="alarm-reward-batcher", daemon=True)
        self.worker.start()
        self._thread: threading.Thread | None = None

    def count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- batching -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            jobs, n = [first], len(first.completions)
            deadline = time.monotonic() + self.max_wait
            while n < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    job = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                jobs.append(job)
                n += len(job.completions)
            self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        try:
            self._score(jobs)
        except AlarmError as e:
            if len(jobs) > 1:  # find the request at fault; the others still get their rewards
                for job in jobs:
                    self._run([job])
                return
            jobs[0].error = (400, str(e).splitlines()[0])
        except Exception as e:  # a bug or a backend failure: answer 500, keep serving
            traceback.print_exc(file=sys.stderr)
            for job in jobs:
                job.error = (500, f"internal error while scoring: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        for job in jobs:
            job.done.set()

    def _score(self, jobs: list[Job]) -> None:
        prompts = [p for j in jobs for p in j.prompts]
        completions = [c for j in jobs for c in j.completions]
        rows = [row for j in jobs for row in j.columns]
        keys = sorted({k for row in rows for k in row})
        columns = {k: [row.get(k) for row in rows] for k in keys}
        result, fell_back = score_for_engine(self.reward_set, prompts, completions, columns, fallback=self.fallback,
                                             who="serve-reward", log=self.log)
        self.count("batches")
        self.count("responses", len(completions))
        self.count("fallbacks", sum(fell_back))
        start = 0
        for job in jobs:
            sl = slice(start, start + len(job.completions))
            start = sl.stop
            part = ScoredSequences(result.returns[sl], result.holistic_part[sl], result.aspect_part[sl],
                          result.gate_open[sl], result.holistic_z[sl], {k: v[sl] for k, v in result.aspects.items()},
                          result.stats)
            flags = {"prompt_truncated": [float(x) for x in job.truncated],
                     "response_clipped": [float(x) for x in job.clipped],
                     "fallback": [float(x) for x in fell_back[sl]]}
            job.result = response_body(part, self.keys, flags)

    # -- HTTP -----------------------------------------------------------------------------------------

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "alarm-serve-reward"
            timeout = server.socket_timeout  # every read and write on the connection; a stalled client is dropped

            def setup(self):
                super().setup()
                # small answers go out at once (Nagle's algorithm against the client's delayed ACK: +40 ms)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):  # one line per batch is logged instead, not per request
                pass

            def _send(self, code: int, payload: dict, extra_headers: dict | None = None):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra_headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, message: str, **headers):
                if code == 400:
                    server.count("bad_requests")
                self._send(code, {"error": message}, headers)

            def do_GET(self):
                if self.path.rstrip("/") in ("/health", ""):
                    rs = server.reward_set
                    return self._send(200, {"status": "ok", "mode": rs.config.mode, "rewards": rs.names(),
                                            "epsilon": rs.epsilon, "queued": server.queue.qsize(), **server.stats})
                self._error(404, f"no GET {self.path}; POST /get_reward or GET /health")

            def do_POST(self):
                try:
                    self._post()
                except (TimeoutError, ConnectionError):
                    self.close_connection = True  # the client stalled or left: drop it, serve the others
                except Exception as e:  # a bug: answer 500 with one line instead of dropping the connection
                    traceback.print_exc(file=sys.stderr)
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self._error(500, f"internal error: {type(e).__name__}")

            def _post(self):
                if self.path.rstrip("/") != "/get_reward":
                    return self._error(404, f"no POST {self.path}; the reward is at /get_reward")
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self.close_connection = True
                    return self._error(411, "send a Content-Length header")
                if length < 0 or length > server.max_body:
                    self.close_connection = True  # the body is not read: this connection cannot carry another
                    return self._error(413, f"body of {length} bytes is over the limit of {server.max_body} "
                                            "(--max-body-mb); send fewer responses per request")
                raw = self.rfile.read(length)
                if len(raw) < length:
                    self.close_connection = True
                    return
                server.count("requests")
                try:
                    body = json.loads(raw)
                except RecursionError:
                    return self._error(400, "the body is nested too deeply to be a reward request")
                except (ValueError, UnicodeDecodeError) as e:
                    return self._error(400, f"the body is not valid JSON ({str(e).splitlines()[0]})")
                try:
                    job = parse_request(body, server.label_column, server.end_tokens, server.max_chars)
                except BadRequest as e:
                    return self._error(400, str(e))
                except RecursionError:
                    return self._error(400, "a label is nested too deeply")
                server.count("truncated_prompts", sum(job.truncated))
                if any(job.clipped):
                    server.count("clipped_responses", sum(job.clipped))
                    server.log(f"{sum(job.clipped)} response(s) over {server.max_chars} characters scored on their "
                               "first --max-response-chars characters")
                try:
                    server.queue.put_nowait(job)
                except queue.Full:
                    server.count("rejected_busy")
                    return self._error(503, f"busy: {server.queue.maxsize} requests are waiting; retry shortly",
                                       **{"Retry-After": "1"})
                if not job.done.wait(server.request_timeout):
                    return self._error(504, f"no result within {server.request_timeout:g} s")
                if job.error is not None:
                    return self._error(*job.error)
                self._send(200, job.result)

        return Handler

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> RewardServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="alarm-reward-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
        self.worker.join(timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


# -------------------------------------------------------------------------------------------- the command


def make_server(args) -> RewardServer:
    if not 0 <= args.port <= 65535:
        raise AlarmError(f"--port must be between 0 and 65535 (0: any free port), got {args.port}")
    reward_set = fitted_reward_set(config=args.config, state=args.state, run=args.run, overrides=args.overrides)
    end_tokens = tuple(t for t in args.end_tokens.split(",") if t) if args.end_tokens is not None else END_TOKENS
    return RewardServer(reward_set, host=args.host, port=args.port, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, label_column=args.label_column,
                        max_body_mb=args.max_body_mb, socket_timeout=args.socket_timeout, end_tokens=end_tokens,
                        max_response_chars=args.max_response_chars, fallback=args.fallback_reward)


def cmd_serve_reward(args) -> int:
    server = make_server(args)
    rs = server.reward_set
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        server.log(f"listening on {args.host}: anyone who can reach this port can use the reward models "
                   "(no authentication); keep it on a trusted network")
    server.log(f"{rs.config.mode} reward ({', '.join(rs.names())}, ε {rs.epsilon:.3g}) at {server.url}/get_reward")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.log("stopped")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("serve-reward", help="serve a recipe's combined reward over HTTP (OpenRLHF's remote contract)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="recipe YAML (default with --run: the run's config.yaml)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--state", help="reward_state.json (normalisers, ε), or a checkpoint directory")
    src.add_argument("--run", help="a run directory: its config.yaml, reward_state.json and kept aspects")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="the port to listen on")
    p.add_argument("--max-batch", type=int, default=64, help="responses merged into one scoring pass")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for others to merge")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get HTTP 503")
    p.add_argument("--label-column", default="reference", help="the column a string label fills")
    p.add_argument("--end-tokens", default=None, metavar="TOK,TOK",
                   help="end-of-turn tokens removed from the end of a response before scoring (default: "
                        f"{','.join(END_TOKENS)}); '' keeps them")
    p.add_argument("--max-body-mb", type=float, default=4.0, help="larger request bodies get HTTP 413 (default 4)")
    p.add_argument("--socket-timeout", type=float, default=30.0,
                   help="seconds a client may stall while sending or receiving before it is disconnected")
    p.add_argument("--max-response-chars", type=int, default=65536,
                   help="a longer response is scored on its first this many characters (0: no cap)")
    p.add_argument("--fallback-reward", type=float, default=None,
                   help="the reward of a response that cannot be scored (logged); default: HTTP 400 naming it")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. combine.epsilon=0.5")
    p.set_defaults(handler=cmd_serve_reward)


__all__ = ["END_TOKENS", "BadRequest", "RewardServer", "add_commands", "cmd_serve_reward", "make_server",
           "parse_request", "split_query", "strip_end_tokens"]
