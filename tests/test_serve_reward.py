"""`alarm serve-reward` (OpenRLHF's remote reward contract) and the verl adapter, on a real server on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import threading
import time

import pytest
import requests
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from alarm.combine import CombineConfig, RewardSet
from alarm.errors import AlarmError
from alarm.integrations.serve import RewardServer, add_commands, make_server
from alarm.rewards.base import FunctionReward


def overlap(prompts, completions, reference=None, **kw):
    """Reference words present, plus a little of the prompt's length (so the prompt read matters)."""
    reference = reference or [None] * len(completions)
    return [float(len(set((r or "").split()) & set(c.split()))) + 0.05 * len(p)
            for p, c, r in zip(prompts, completions, reference)]


def chars(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def reward_set(slow: float = 0.0):
    def holistic(prompts, completions, **kw):
        time.sleep(slow)
        return overlap(prompts, completions, **kw)

    rs = RewardSet(CombineConfig(mode="hierarchical", holistic_weight=5.0, epsilon=0.0),
                   holistic=FunctionReward(holistic, name="overlap"),
                   aspects={"chars": FunctionReward(chars, name="chars")}, normalize=("holistic", "chars"))
    fit = ["paris is the capital", "no idea", "the capital of france is paris", "x", "berlin", ""]
    rs.fit(["<user>capital of France?<assistant>"] * len(fit), fit, reference=["paris capital france"] * len(fit))
    return rs


PROMPTS = ["<user>capital of France?<assistant>", "<user>capital of France?<assistant>", "<user>boil?<assistant>"]
RESPONSES = ["paris is the capital of france", "I do not know", "water boils at 100 degrees"]
LABELS = ["paris capital france", "paris capital france", {"reference": "water boils 100", "question": "boil?"}]


@pytest.fixture()
def server():
    with RewardServer(reward_set(), port=0, max_wait_ms=5) as srv:
        yield srv


def post(srv, body, raw=None):
    data = raw if raw is not None else json.dumps(body)
    return requests.post(srv.url + "/get_reward", data=data, headers={"Content-Type": "application/json"}, timeout=10)


def test_contract_rewards_extra_logs_and_the_gate(server):
    rs = server.reward_set
    resp = post(server, {"query": [p + r for p, r in zip(PROMPTS, RESPONSES)], "prompts": PROMPTS, "labels": LABELS,
                         "metas": [{}, {}, {}]})  # keys OpenRLHF may add are ignored
    assert resp.status_code == 200, resp.text
    out = resp.json()
    # string labels fill `reference`; an object label gives its columns, and its question is what rewards read
    expected = rs.sequence_rewards([PROMPTS[0], PROMPTS[1], "boil?"], RESPONSES,
                                   reference=["paris capital france", "paris capital france", "water boils 100"])[0]
    assert out["rewards"] == pytest.approx(expected) and out["scores"] == out["rewards"]
    logs = out["extra_logs"]
    assert {"gate_open", "holistic_z", "holistic_part", "aspect_part", "aspect/chars"} <= set(logs)
    assert all(len(v) == 3 and all(isinstance(x, float) for x in v) for v in logs.values())
    gate = logs["gate_open"]
    assert 1.0 in gate and 0.0 in gate
    assert min(r for r, g in zip(out["rewards"], gate) if g) > max(r for r, g in zip(out["rewards"], gate) if not g)
    health = requests.get(server.url + "/health", timeout=5).json()
    assert health["rewards"] == ["holistic", "chars"] and health["mode"] == "hierarchical"


def test_bad_bodies_get_400_with_one_line_and_the_server_keeps_serving(server):
    good = {"query": [PROMPTS[0] + RESPONSES[0]], "prompts": [PROMPTS[0]], "labels": [LABELS[0]]}
    cases = [
        (None, "{not json", "not valid JSON"),
        ([1, 2], None, "JSON object"),
        ({"prompts": ["a"]}, None, "needs 'query'"),
        ({"query": "abc", "prompts": ["a"]}, None, "'query' must be a list of strings"),
        ({"query": ["a", 3], "prompts": ["a", "b"]}, None, "'query' must be a list of strings"),
        ({"query": ["ab"], "prompts": ["a", "b"]}, None, "'prompts' has 2 entries for 1 queries"),
        ({"query": ["hello"], "prompts": ["bye"]}, None, "query 0 starts neither with prompt 0 nor with an end"),
        ({"query": ["ab"], "prompts": ["a"], "labels": ["x", "y"]}, None, "one entry per query"),
        ({"query": ["ab"]}, None, "'prompts' is missing"),
        ({"query": []}, None, "is empty"),
    ]
    for body, raw, message in cases:
        resp = post(server, body, raw)
        assert resp.status_code == 400, (body, resp.text)
        err = resp.json()["error"]
        assert message in err and "\n" not in err, err
    assert requests.post(server.url + "/elsewhere", json=good, timeout=5).status_code == 404
    resp = post(server, good)
    assert resp.status_code == 200 and len(resp.json()["rewards"]) == 1
    assert server.stats["bad_requests"] == len(cases)


def test_concurrent_clients_are_batched_and_each_gets_its_own_rewards():
    rs = reward_set()
    n_clients = 8
    with RewardServer(rs, port=0, max_wait_ms=300, max_batch=64) as srv:
        barrier = threading.Barrier(n_clients)
        results: dict[int, list] = {}

        def client(i):
            responses = [f"paris {'capital ' * i}answer {i}", f"reply number {i} " * (i % 3 + 1)]
            prompts = [f"question {i}?", f"question {i}?"]
            barrier.wait()
            resp = requests.post(srv.url + "/get_reward", timeout=20, json={
                "query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts,
                "labels": ["paris capital", "paris capital"]})
            results[i] = (resp.status_code, resp.json(), prompts, responses)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for code, out, prompts, responses in results.values():
            assert code == 200
            assert out["rewards"] == pytest.approx(rs.sequence_rewards(prompts, responses, reference=["paris capital"] * 2)[0])
        assert srv.stats["requests"] == n_clients and srv.stats["responses"] == 2 * n_clients
        assert srv.stats["batches"] < n_clients  # concurrent requests were merged into fewer scoring passes


def test_bounded_queue_answers_503_when_full():
    with RewardServer(reward_set(slow=0.4), port=0, max_batch=1, max_wait_ms=0, max_queue=1) as srv:
        body = {"query": [PROMPTS[0] + RESPONSES[0]], "prompts": [PROMPTS[0]], "labels": [LABELS[0]]}
        codes = []

        def client():
            codes.append(requests.post(srv.url + "/get_reward", json=body, timeout=20).status_code)

        threads = []
        for _ in range(4):  # one is scored, one waits in the queue, the others find it full
            threads.append(threading.Thread(target=client))
            threads[-1].start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
        assert srv.stats["rejected_busy"] == codes.count(503)


def test_a_request_whose_rewards_fail_does_not_fail_the_others_in_its_batch():
    def strict(prompts, completions, reference=None, **kw):
        if reference is None or any(r is None for r in reference):
            raise AlarmError("reward 'strict' needs the column 'reference'")
        return overlap(prompts, completions, reference=reference)

    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=FunctionReward(strict, name="strict"), normalize=())
    with RewardServer(rs, port=0, max_wait_ms=300) as srv:
        out = {}

        def client(key, labels):
            out[key] = requests.post(srv.url + "/get_reward", timeout=20,
                                     json={"query": ["p a"], "prompts": ["p "], "labels": labels})

        ts = [threading.Thread(target=client, args=("ok", ["a"])), threading.Thread(target=client, args=("bad", None))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out["ok"].status_code == 200
        assert out["bad"].status_code == 400 and "needs the column 'reference'" in out["bad"].json()["error"]


# ------------------------------------------------------------------------------- the command and verl


@pytest.fixture()
def run_dir(tmp_path):
    """A finished run's files: the recipe, its fitted normalisers and a selection that kept one aspect."""
    from alarm.config import build_reward_set, load_recipe

    recipe = {"name": "t", "rewards": {"holistic": {"type": "length", "unit": "words"},
                                       "aspects": {"chars": {"type": "length", "unit": "chars"},
                                                   "sentences": {"type": "length", "unit": "sentences"}},
                                       "normalize": ["holistic", "chars"]},
              "combine": {"mode": "hierarchical", "epsilon": 0.0, "holistic_weight": 2.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recipe))
    rs = build_reward_set(load_recipe(tmp_path / "config.yaml"))
    fit = ["one", "one two three", "a b", "four words are here", "x y z w v u"]
    rs.fit(["q"] * len(fit), fit)
    (tmp_path / "reward_state.json").write_text(json.dumps(rs.state()))
    (tmp_path / "selection.json").write_text(json.dumps({"kept": ["chars"], "dropped": ["sentences"]}))
    return tmp_path


def parse(argv):
    parser = argparse.ArgumentParser(prog="alarm")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_command_serves_a_run_with_its_kept_aspects(run_dir):
    args = parse(["serve-reward", "--run", str(run_dir), "--port", "0"])
    assert args.host == "127.0.0.1" and args.handler.__name__ == "cmd_serve_reward"
    srv = make_server(args).start()
    try:
        assert requests.get(srv.url + "/health", timeout=5).json()["rewards"] == ["holistic", "chars"]
        resp = requests.post(srv.url + "/get_reward", timeout=10,
                             json={"query": ["Q: hi. A: one two", "Q: hi. A: x"], "prompts": ["Q: hi. A: "] * 2})
        assert resp.status_code == 200
        assert resp.json()["rewards"] == pytest.approx(srv.reward_set.sequence_rewards(["Q: hi. A: "] * 2,
                                                                                         ["one two", "x"])[0])
    finally:
        srv.close()
    with pytest.raises(AlarmError, match="not fitted"):  # a recipe alone has no normalisers
        make_server(parse(["serve-reward", "--config", str(run_dir / "config.yaml"), "--port", "0"]))
    with_state = make_server(parse(["serve-reward", "--config", str(run_dir / "config.yaml"), "--state",
                                    str(run_dir / "reward_state.json"), "--port", "0", "combine.epsilon=0.5"]))
    assert with_state.reward_set.names() == ["holistic", "chars", "sentences"]  # no selection without --run
    assert with_state.reward_set.epsilon == 0.5
    with_state.close()


def test_verl_compute_score_local_batch_and_through_the_server(run_dir):
    from alarm.integrations import verl
    from alarm.integrations.run_rewards import fitted_reward_set

    rs = fitted_reward_set(run=str(run_dir))
    sols = ["one two three four", "x", ""]
    infos = [{"question": "count?", "index": 0}, {"question": "count?", "index": 1}, None]
    expected = rs.sequence_rewards(["count?", "count?", ""], sols)[0]
    one = verl.compute_score("qa", sols[0], None, infos[0], run=str(run_dir))
    assert one["score"] == pytest.approx(expected[0]) and {"gate_open", "holistic_z", "aspect/chars"} <= set(one)
    batch = verl.compute_score_batch(["qa"] * 3, sols, [None] * 3, infos, run=str(run_dir))
    assert [d["score"] for d in batch] == pytest.approx(expected)
    assert len({tuple(sorted(d)) for d in batch}) == 1  # the same keys in every dict: verl stacks them
    with RewardServer(rs, port=0) as srv:
        remote = verl.compute_score_batch(["qa"] * 3, sols, [None] * 3, infos, url=srv.url)
    assert [d["score"] for d in remote] == pytest.approx(expected)
    assert remote[0]["gate_open"] == batch[0]["gate_open"]
    with pytest.raises(AlarmError, match="needs run=RUN_DIR"):
        verl.compute_score("qa", "x", None, {})


# ------------------------------------------------------------------------------------------ hardening


def test_deeply_nested_json_is_a_400_not_a_dropped_connection(server):
    raw = "[" * 100_000 + "]" * 100_000
    resp = post(server, None, raw)
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["error"]
    label = '{"a": ' * 5000 + '"x"' + "}" * 5000  # deep, but within what the parser takes: a label like any
    resp = post(server, None, '{"query": ["p a"], "prompts": ["p "], "labels": [' + label + "]}")
    assert resp.status_code in (200, 400)  # an answer either way, and the server keeps serving
    assert post(server, {"query": ["p a"], "prompts": ["p "]}).status_code == 200


def test_body_limit_and_stalled_clients():
    import socket

    with RewardServer(reward_set(), port=0, max_body_mb=0.01, socket_timeout=0.5) as srv:
        big = {"query": ["p " + "a" * 20_000], "prompts": ["p "]}
        resp = post(srv, big)
        assert resp.status_code == 413 and "--max-body-mb" in resp.json()["error"]
        # a client that announces a body and stalls is disconnected after the socket timeout ...
        host, port = srv.httpd.server_address[:2]
        stalled = socket.create_connection((host, port))
        stalled.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"query\"")
        t0 = time.monotonic()
        # ... while the others are served meanwhile
        assert post(srv, {"query": ["p a"], "prompts": ["p "]}).status_code == 200
        stalled.settimeout(5)
        assert stalled.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 3
        stalled.close()


def test_one_huge_response_does_not_hold_up_the_others():
    def slow_on_length(prompts, completions, **kw):  # a reward whose cost grows with the text
        time.sleep(sum(len(c) for c in completions) / 1e6)
        return [float(len(c.split())) for c in completions]

    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=FunctionReward(slow_on_length, name="slow"),
                   normalize=())
    with RewardServer(rs, port=0, max_wait_ms=50, max_response_chars=10_000) as srv:
        huge = "word " * 600_000  # 3 MB: 3 s of scoring uncapped
        out = {}

        def client(key, response):
            t0 = time.monotonic()
            r = requests.post(srv.url + "/get_reward", timeout=30, json={"query": ["p " + response], "prompts": ["p "]})
            out[key] = (r, time.monotonic() - t0)

        ts = [threading.Thread(target=client, args=("huge", huge))]
        ts += [threading.Thread(target=client, args=(i, "a short answer")) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(out[i][0].status_code == 200 and out[i][1] < 1.5 for i in range(4)), out
        r = out["huge"][0]
        assert r.status_code == 200 and r.json()["extra_logs"]["response_clipped"] == [1.0]
        assert r.json()["rewards"] == rs.sequence_rewards(["p "], [huge[:10_000]])[0]  # its first 10 000 characters
        assert srv.stats["clipped_responses"] == 1


def test_end_tokens_are_stripped_and_truncated_prompts_matched():
    from alarm.integrations.serve import split_query, strip_end_tokens, suffix_overlap

    assert strip_end_tokens("answer<|im_end|>") == "answer"
    assert strip_end_tokens("answer <|im_end|>\n<|endoftext|>") == "answer "  # the text before them is kept
    assert strip_end_tokens("answer\n") == "answer\n" and strip_end_tokens("a <|im_end|> b") == "a <|im_end|> b"
    assert strip_end_tokens("answer<|im_end|>", ()) == "answer<|im_end|>"
    assert split_query("PROMPT: hi. ANSWER", "PROMPT: hi. ") == ("ANSWER", False)
    assert split_query("hi. ANSWER", "PROMPT: hi. ") == ("ANSWER", True)  # cut from the left
    assert split_query("\ufffdhi. ANSWER", "PROMPT: hi. ") == ("ANSWER", True)  # cut inside a character
    assert split_query("zzz", "PROMPT: hi. ") == (None, False)
    assert suffix_overlap("aaab", "aabX") == 3 and suffix_overlap("abab", "ababab") == 4


@given(st.text(alphabet="ab ", max_size=30), st.text(alphabet="ab ", max_size=30), st.integers(0, 30))
@settings(max_examples=300, deadline=None)
def test_suffix_overlap_is_the_longest_prompt_end_the_query_starts_with(prompt, response, cut):
    from alarm.integrations.serve import suffix_overlap

    query = prompt[min(cut, len(prompt)):] + response
    k = suffix_overlap(prompt, query)
    brute = max(i for i in range(len(prompt) + 1) if query.startswith(prompt[len(prompt) - i:]))
    assert k == brute


def test_fallback_reward_or_an_error_naming_the_response():
    def strict(prompts, completions, **kw):
        return [float("nan") if "bad" in c else 1.0 for c in completions]

    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=FunctionReward(strict, name="strict"), normalize=())
    body = {"query": ["p good", "p bad"], "prompts": ["p ", "p "]}
    with RewardServer(rs, port=0) as srv:
        resp = post(srv, body)
        assert resp.status_code == 400 and "completion 1" in resp.json()["error"]
    logged = []
    with RewardServer(rs, port=0, fallback=-5.0, log=logged.append) as srv:
        resp = post(srv, body)
        assert resp.status_code == 200
        out = resp.json()
        good = rs.sequence_rewards(["p "], ["good"])[0][0]
        assert out["rewards"] == [good, -5.0] and out["extra_logs"]["fallback"] == [0.0, 1.0]
        assert any("response 1" in m and "-5.0" in m for m in logged) and srv.stats["fallbacks"] == 1
        assert set(out["extra_logs"]) == set(srv.keys)  # the same keys in every answer
