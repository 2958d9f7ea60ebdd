"""alarm.rewards.remote against a local stand-in for vLLM / TEI / OpenRLHF / plain reward servers."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alarm.errors import AlarmError
from alarm.rewards.remote import RemoteReward


def score_of(text: str) -> float:
    return float(text.count("e")) - 0.1 * len(text)


class StandIn(BaseHTTPRequestHandler):
    """Answers each API with the real response shape; scores are score_of(prompt + completion)."""

    def log_message(self, *args):
        pass

    def _send(self, code, payload):
        body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.seen.append((self.path, body, self.headers.get("Authorization")))
        if srv.fail_first > 0:
            srv.fail_first -= 1
            return self._send(503, {"error": "warming up"})
        if srv.delay:
            time.sleep(srv.delay)
        if srv.key and self.headers.get("Authorization") != f"Bearer {srv.key}":
            return self._send(401, {"error": "bad key"})
        if self.path == "/pooling":  # a reward model with ALL pooling: one [score] row per token
            data = [{"index": i, "object": "pooling", "data": [[0.0], [score_of(t)]]} for i, t in enumerate(body["input"])]
            return self._send(200, {"object": "list", "data": data[::-1]})  # out of order on purpose
        if self.path == "/classify":
            data = [{"index": i, "label": "good", "probs": [1 - 1 / (1 + abs(score_of(t))), 1 / (1 + abs(score_of(t)))],
                     "num_classes": 2} for i, t in enumerate(body["input"])]
            return self._send(200, {"object": "list", "data": data})
        if self.path == "/predict":
            rows = [[{"score": score_of(p + c), "label": "LABEL_0"}, {"score": -1.0, "label": "LABEL_1"}]
                    for p, c in body["inputs"]]
            return self._send(200, rows)
        if self.path == "/rerank":
            res = [{"index": i, "score": score_of(body["query"] + t)} for i, t in enumerate(body["texts"])]
            return self._send(200, sorted(res, key=lambda r: -r["score"]))
        if self.path == "/get_reward":
            return self._send(200, {"rewards": [score_of(q) for q in body["query"]], "scores": [0] * len(body["query"])})
        if self.path == "/score":
            return self._send(200, {"scores": [score_of(p + c) for p, c in zip(body["prompts"], body["completions"])]})
        if self.path == "/garbage":
            return self._send(200, b"<html>not json</html>")
        return self._send(404, {"error": f"no route {self.path}"})


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that gave up (the timeout test) is expected
        pass


@pytest.fixture()
def server():
    srv = QuietServer(("127.0.0.1", 0), StandIn)
    srv.seen, srv.fail_first, srv.delay, srv.key = [], 0, 0.0, None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv, path=""):
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


PROMPTS = ["Question one?", "Question one?", "Another question", "Q"]
COMPLETIONS = ["the answer is here", "nope", "eeee", ""]
EXPECTED = [score_of(p + c) for p, c in zip(PROMPTS, COMPLETIONS)]


@pytest.mark.parametrize("api", ["plain", "openrlhf", "vllm_pooling", "tei_predict", "tei_rerank"])
def test_every_api_reads_the_scores_in_order_with_batching(server, api):
    r = RemoteReward(url(server, "/score" if api == "plain" else ""), api=api, batch_size=3, model="rm")
    assert r(PROMPTS, COMPLETIONS) == pytest.approx(EXPECTED)
    paths = {p for p, _, _ in server.seen}
    assert paths == {{"plain": "/score", "openrlhf": "/get_reward", "vllm_pooling": "/pooling",
                      "tei_predict": "/predict", "tei_rerank": "/rerank"}[api]}
    if api == "tei_rerank":  # one request per prompt and chunk: [q1 q1 q2] then [q3]
        assert [b["query"] for _, b, _ in server.seen] == ["Question one?", "Another question", "Q"]
    else:
        assert len(server.seen) == 2  # 4 responses in batches of 3
    if api == "vllm_pooling":
        assert server.seen[0][1]["model"] == "rm" and server.seen[0][1]["input"][0] == PROMPTS[0] + COMPLETIONS[0]


def test_template_and_label_selection(server):
    r = RemoteReward(url(server), api="vllm_classify", label_index=1, template="U: {prompt}\nA: {completion}")
    out = r(PROMPTS, COMPLETIONS)
    sent = server.seen[0][1]["input"]
    assert sent[0] == "U: Question one?\nA: the answer is here"
    assert out == pytest.approx([1 / (1 + abs(score_of(t))) for t in sent])
    tei = RemoteReward(url(server), api="tei_predict", label="LABEL_1")
    assert tei(PROMPTS, COMPLETIONS) == [-1.0] * 4


def test_retries_with_backoff_then_succeeds(server):
    server.fail_first = 2
    r = RemoteReward(url(server, "/score"), retries=3, backoff=0.01)
    assert r(PROMPTS, COMPLETIONS) == pytest.approx(EXPECTED)
    assert len(server.seen) == 3 and r.requests_sent == 3


def test_server_down_timeout_and_bad_answers_are_one_line_errors(server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    r = RemoteReward(f"http://127.0.0.1:{dead}/score", retries=1, backoff=0.0)
    with pytest.raises(AlarmError, match=r"failed after 2 attempts \(cannot connect\); start it") as e:
        r(PROMPTS, COMPLETIONS)
    assert "\n" not in str(e.value)
    server.delay = 0.5
    slow = RemoteReward(url(server, "/score"), timeout=0.1, retries=0)
    with pytest.raises(AlarmError, match="no answer within 0.1 s"):
        slow(PROMPTS, COMPLETIONS)
    server.delay = 0.0
    with pytest.raises(AlarmError, match="HTTP 404"):  # a client error is not retried
        RemoteReward(url(server, "/nowhere"), retries=3)(PROMPTS, COMPLETIONS)
    assert server.seen[-1][0] == "/nowhere" and [p for p, _, _ in server.seen].count("/nowhere") == 1
    with pytest.raises(AlarmError, match="invalid JSON"):
        RemoteReward(url(server, "/garbage"))(PROMPTS, COMPLETIONS)
    with pytest.raises(AlarmError, match="label_index 5 is out of range"):
        RemoteReward(url(server), api="vllm_classify", label_index=5)(PROMPTS, COMPLETIONS)
    with pytest.raises(AlarmError, match="api 'nope' is unknown"):
        RemoteReward(url(server), api="nope")
    with pytest.raises(AlarmError, match="full endpoint"):
        RemoteReward(url(server), api="plain")


def test_api_key_comes_from_the_environment_and_is_never_shown(server, monkeypatch):
    server.key = "s3cret-key"
    with pytest.raises(AlarmError, match="RM_KEY_FOR_TEST .* is not set"):
        RemoteReward(url(server, "/score"), api_key_env="RM_KEY_FOR_TEST")
    monkeypatch.setenv("RM_KEY_FOR_TEST", "wrong")
    bad = RemoteReward(url(server, "/score"), api_key_env="RM_KEY_FOR_TEST")
    with pytest.raises(AlarmError, match="HTTP 401") as e:
        bad(PROMPTS, COMPLETIONS)
    assert "wrong" not in str(e.value) and "wrong" not in repr(bad)
    monkeypatch.setenv("RM_KEY_FOR_TEST", "s3cret-key")
    good = RemoteReward(url(server, "/score"), api_key_env="RM_KEY_FOR_TEST")
    assert good(PROMPTS, COMPLETIONS) == pytest.approx(EXPECTED)
    assert server.seen[-1][2] == "Bearer s3cret-key" and "s3cret" not in repr(good)


def test_recipe_builds_a_remote_holistic_reward(server, tmp_path):
    import yaml

    from alarm.config import build_reward_set, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "rewards": {"holistic": {"type": "remote", "url": url(server), "api": "vllm_pooling", "batch_size": 2},
                    "normalize": ["holistic"]},
        "combine": {"mode": "holistic_only"}}))
    rs = build_reward_set(load_recipe(recipe))
    assert rs.holistic.name == "holistic"
    assert rs.raw_scores(PROMPTS, COMPLETIONS)["holistic"] == pytest.approx(EXPECTED)
    recipe.write_text(yaml.safe_dump({"rewards": {"holistic": {"type": "remote", "url": url(server), "bogus": 1}}}))
    with pytest.raises(AlarmError, match="rewards.holistic.bogus: unknown setting for remote"):
        load_recipe(recipe)
