"""Evaluation: statistics against hand-computed values, the judge's bookkeeping against a fake OpenAI-compatible
server (canned replies, unparseable ones, a dead endpoint, the cache, an interrupted run), and the commands."""

from __future__ import annotations

import argparse
import json
import math
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import tiny
from hypothesis import given
from hypothesis import strategies as st

from alarm.errors import AlarmError
from alarm.evaluation.commands import add_commands, default_aspects, summarize_dense
from alarm.evaluation.compare import align_systems, compare_systems, mean_ci, wilson_interval, win_counts
from alarm.evaluation.judge import Judge, JudgeConfig, combine_orders, parse_verdict, summarize_outcomes
from alarm.rewards.base import Dense

# ---------------------------------------------------------------------------------------------------------
# Means and confidence intervals


def test_t_interval_by_hand():
    c = mean_ci([1.0, 2.0, 3.0, 4.0, None])
    # s = sqrt(((1.5)^2 + (0.5)^2) * 2 / 3) = 1.2909944; t_{0.975, 3} = 3.1824463; half = t * s / 2
    half = 3.1824463 * 1.2909944 / 2
    assert c.mean == pytest.approx(2.5)
    assert (c.low, c.high) == (pytest.approx(2.5 - half, abs=1e-6), pytest.approx(2.5 + half, abs=1e-6))
    assert (c.n, c.n_missing, c.method) == (4, 1, "t")


def test_interval_undefined_for_one_or_no_value():
    assert mean_ci([3.0]).mean == 3.0 and mean_ci([3.0]).low is None
    empty = mean_ci([None, None])
    assert empty.mean is None and empty.n == 0 and empty.n_missing == 2


def test_bootstrap_interval():
    const = mean_ci([2.0] * 5, method="bootstrap")
    assert (const.low, const.high) == (2.0, 2.0)
    values = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    a, b = mean_ci(values, "bootstrap", seed=3), mean_ci(values, "bootstrap", seed=3)
    assert a == b  # seeded
    assert 0.0 <= a.low < a.mean < a.high <= 1.0
    t = mean_ci(values)
    assert abs((a.high - a.low) - (t.high - t.low)) < 0.25  # same scale as the t interval


def test_bad_ci_settings():
    with pytest.raises(AlarmError, match="'t' or 'bootstrap'"):
        mean_ci([1.0, 2.0], method="normal")
    with pytest.raises(AlarmError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)


# ---------------------------------------------------------------------------------------------------------
# Win rates

X = [3.0, 1.0, 2.0, None, 5.0, 0.5]
Y = [1.0, 1.0, 3.0, 2.0, 4.0, 0.4]


def test_win_counts_by_hand():
    # pairs: win, tie, loss, n/a, win, win
    w = win_counts(X, Y)
    assert (w.wins, w.losses, w.ties, w.n_missing) == (3, 1, 1, 1)
    assert w.win_rate == pytest.approx(3 / 4)  # ties excluded


def test_win_counts_lower_is_better_flips():
    w = win_counts(X, Y, higher_is_better=False)
    assert (w.wins, w.losses, w.ties) == (1, 3, 1)
    assert w.win_rate == pytest.approx(1 / 4)


def test_win_counts_tie_tolerance_and_all_ties():
    w = win_counts(X, Y, tie_tol=0.15)  # 0.5 vs 0.4 becomes a tie
    assert (w.wins, w.losses, w.ties) == (2, 1, 2)
    ties = win_counts([1.0, 2.0, None], [1.0, 2.0, 5.0])
    assert (ties.wins, ties.losses, ties.ties, ties.n_missing) == (0, 0, 2, 1)
    assert ties.win_rate is None and ties.low is None


def test_wilson_interval_by_hand():
    low, high = wilson_interval(8, 10)  # textbook values for 8/10 at 95 %
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (None, None)
    assert wilson_interval(5, 5)[1] == pytest.approx(1.0)


@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=30))
def test_win_rates_of_the_two_sides_sum_to_one(pairs):
    xs, ys = [float(a) for a, _ in pairs], [float(b) for _, b in pairs]
    w, v = win_counts(xs, ys), win_counts(ys, xs)
    assert (w.wins, w.losses, w.ties) == (v.losses, v.wins, v.ties)
    if w.win_rate is not None:
        assert w.win_rate + v.win_rate == pytest.approx(1.0)
    assert win_counts(xs, ys, higher_is_better=False).wins == w.losses


# ---------------------------------------------------------------------------------------------------------
# Aligning systems and the comparison


def _rec(pid, completion, sample=0, **scores):
    return {"prompt_id": pid, "sample": sample, "prompt": f"q{pid}", "completion": completion, "scores": scores}


def test_align_missing_prompts_is_an_error_unless_allowed():
    a = [_rec("1", "x"), _rec("2", "x"), _rec("3", "x")]
    b = [_rec("1", "y"), _rec("3", "y"), _rec("4", "y")]
    with pytest.raises(AlarmError, match="a lacks 1, b lacks 1.*--allow-missing"):
        align_systems({"a": a, "b": b})
    al = align_systems({"a": a, "b": b}, allow_missing=True)
    assert al.prompt_ids == ["1", "3"]
    assert al.excluded == {"a": ["2"], "b": ["4"]} and al.missing == {"a": ["4"], "b": ["2"]}
    with pytest.raises(AlarmError, match="twice"):
        align_systems({"a": a + [_rec("1", "z")], "b": b}, allow_missing=True)
    with pytest.raises(AlarmError, match="at least two"):
        align_systems({"a": a})


def test_compare_systems_by_hand():
    a = [_rec("1", "x", r=1.0, err=0.0), _rec("2", "x", r=3.0, err=2.0), _rec("3", "x", r=2.0, err=1.0)]
    b = [_rec("3", "y", r=2.0, err=0.0), _rec("1", "y", r=0.0, err=1.0), _rec("2", "y", r=4.0, err=None)]
    res = compare_systems(align_systems({"a": a, "b": b}), ["r", "err"], {"err": False})
    assert res["means"]["a"]["r"]["mean"] == pytest.approx(2.0)
    assert res["means"]["b"]["err"]["n_missing"] == 1
    r = res["pairs"]["a vs b"]["metrics"]["r"]  # prompt 1 win, 2 loss, 3 tie
    assert (r["wins"], r["losses"], r["ties"], r["win_rate"]) == (1, 1, 1, 0.5)
    e = res["pairs"]["a vs b"]["metrics"]["err"]  # lower is better: 1 win (0 < 1), 3 loss (1 > 0), 2 n/a
    assert (e["wins"], e["losses"], e["ties"], e["n_missing"]) == (1, 1, 0, 1)


def test_summarize_dense_by_hand():
    pts = Dense(points=((5, 0.5), (10, -0.5), (15, 0.5)))
    assert summarize_dense(pts, "x" * 15) == (pytest.approx(0.5 / 3), pytest.approx(2 / 3))
    # token-level: chars 0-3 get -1, the other 6 chars the default 0.25
    spans = Dense(spans=((0, 4, -1.0),), default=0.25, level="token")
    mean, pos = summarize_dense(spans, "x" * 10)
    assert mean == pytest.approx((4 * -1 + 6 * 0.25) / 10) and pos == pytest.approx(0.6)
    assert summarize_dense(Dense(), "abc") == (None, None)


def test_default_aspects_skip_holistic_and_duplicate_z_scores():
    names = ["holistic", "holistic.z", "length", "length.z", "g.mean_emitted", "g.share_positive", "only.z"]
    assert default_aspects(names, "holistic") == ["g.mean_emitted", "g.share_positive", "length", "only.z"]


# ---------------------------------------------------------------------------------------------------------
# Verdict parsing and both-orders bookkeeping


@pytest.mark.parametrize("reply, verdict", [
    ("Response A is clearer. [[A]]", "A"),
    ("[[ b ]]", "B"),
    ("The answer is: [C]", "tie"),  # single brackets (SmolLM2's habit)
    ("The answer is B.", "B"),
    ("[Response A] is fine", None),  # an echo of the prompt's section header is not a verdict
    ("Both are equally good. [[C]]", "tie"),
    ("Verdict: B", "B"),
    ("**Verdict:** Response A", "A"),
    ("A", "A"),
    ("Response B.", "B"),
    ("tie", "tie"),
    ("I think [[A]] ... no wait, [[B]]", None),  # conflicting: never pick one
    ("Both responses have merits.", None),
    ("", None),
    (None, None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_combine_orders():
    # first shows X as A, second shows X as B
    assert combine_orders("A", "B") == "win"
    assert combine_orders("B", "A") == "loss"
    assert combine_orders("A", "A") == "tie"  # position bias
    assert combine_orders("A", "tie") == "tie"
    assert combine_orders("A", None) == "tie"  # unparsed
    assert combine_orders(None, None) == "tie"


# ---------------------------------------------------------------------------------------------------------
# A fake OpenAI-compatible server


class FakeServer:
    """Replies come from ``script(messages) -> (status, content)``; records every request."""

    def __init__(self, script):
        self.script = script
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                status, content = outer.script(body["messages"])
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(script):
        s = FakeServer(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def shown(messages) -> tuple[str, str]:
    user = messages[1]["content"]
    a = re.search(r"\[Response A\]\n(.*?)\n\[End of response A\]", user, re.S).group(1)
    b = re.search(r"\[Response B\]\n(.*?)\n\[End of response B\]", user, re.S).group(1)
    return a, b


def fair_judge(messages):
    """Prefers the response containing GOOD; says nothing readable when both contain MUDDLE."""
    a, b = shown(messages)
    if "MUDDLE" in a and "MUDDLE" in b:
        return 200, "Hmm, both have merits and flaws."
    if "GOOD" in a and "GOOD" not in b:
        return 200, "A is better. [[A]]"
    if "GOOD" in b and "GOOD" not in a:
        return 200, "Verdict: B"
    return 200, "[[C]]"


def config(url, tmp_path, **kw):
    kw = {"cache_path": str(tmp_path / "cache.jsonl"), "failures_path": str(tmp_path / "unparsed.jsonl"),
          "backoff": 0.001, "concurrency": 2, **kw}
    return JudgeConfig(base_url=url, model="fake", **kw)


def test_judge_both_orders_and_unparsed_replies(server_factory, tmp_path):
    srv = server_factory(fair_judge)
    judge = Judge(config(srv.url, tmp_path, parse_retries=1))
    items = [("q1", "GOOD answer", "bad answer"),  # win in both orders
             ("q2", "bad answer", "GOOD answer"),  # loss
             ("q3", "plain", "plain too"),  # both say tie
             ("q4", "MUDDLE one", "MUDDLE two")]  # never parses -> tie, logged
    outcomes = judge.judge_many(items)
    assert [o.outcome for o in outcomes] == ["win", "loss", "tie", "tie"]
    assert [o.reason for o in outcomes] == ["agree", "agree", "both_tie", "unparsed"]
    # q4: each order asked twice (the re-ask carries the reminder and the unreadable reply)
    assert len(srv.requests) == 2 * 3 + 2 * 2
    reasks = [r for r in srv.requests if len(r["messages"]) == 4]
    assert len(reasks) == 2 and all("[[A]], [[B]] or [[C]]" in r["messages"][3]["content"] for r in reasks)
    assert judge.unparsed == 2
    failures = [json.loads(line) for line in (tmp_path / "unparsed.jsonl").read_text().splitlines()]
    assert len(failures) == 2 and all(len(f["replies"]) == 2 for f in failures)
    s = summarize_outcomes(outcomes)
    assert (s["wins"], s["losses"], s["ties"], s["win_rate"]) == (1, 1, 2, 0.5)
    assert s["ties_by_reason"] == {"disagree": 0, "both_tie": 1, "unparsed": 1}
    assert (s["verdicts"], s["verdicts_parsed"]) == (8, 6)


def test_position_biased_judge_gives_ties(server_factory, tmp_path):
    srv = server_factory(lambda m: (200, "[[A]]"))
    outcomes = Judge(config(srv.url, tmp_path)).judge_many([("q", "GOOD", "bad"), ("q", "x", "y")])
    assert [o.outcome for o in outcomes] == ["tie", "tie"]
    assert summarize_outcomes(outcomes)["win_rate"] is None  # all ties
    assert summarize_outcomes(outcomes)["ties_by_reason"]["disagree"] == 2


def test_unparsed_reply_never_reuses_an_earlier_verdict(server_factory, tmp_path):
    replies = iter(["[[A]]", "[[B]]", "no idea", "still no idea", "no idea", "nope"])
    srv = server_factory(lambda m: (200, next(replies)))
    judge = Judge(config(srv.url, tmp_path, concurrency=1, parse_retries=1, cache_path=None))
    first = judge.judge_pair("q", "x", "y")
    second = judge.judge_pair("q2", "x", "y")
    assert first.outcome == "win"
    assert second.first.verdict is None and second.second.verdict is None and second.outcome == "tie"
    assert len(srv.requests) == 6


def test_parse_retry_recovers(server_factory, tmp_path):
    def script(messages):
        return (200, "[[A]]") if len(messages) == 4 else (200, "Let me think about it")

    srv = server_factory(script)
    judge = Judge(config(srv.url, tmp_path, parse_retries=1))
    j = judge.judge_once("q", "x", "y")
    assert j.verdict == "A" and j.attempts == 2 and judge.unparsed == 0


def test_server_errors_are_retried_with_exponential_backoff(server_factory, tmp_path):
    calls = {"n": 0}

    def script(messages):
        calls["n"] += 1
        return (503, "busy") if calls["n"] <= 2 else (200, "[[B]]")

    srv = server_factory(script)
    sleeps = []
    judge = Judge(config(srv.url, tmp_path, backoff=0.5), sleep=sleeps.append)
    assert judge.judge_once("q", "x", "y").verdict == "B"
    assert sleeps == [0.5, 1.0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_endpoint_fails_clearly_after_bounded_retries(tmp_path):
    sleeps = []
    judge = Judge(config(f"http://127.0.0.1:{_free_port()}/v1", tmp_path, max_retries=3, backoff=0.25, max_backoff=0.6,
                          concurrency=1),
                  sleep=sleeps.append)
    with pytest.raises(AlarmError, match=r"failed 4 times \(last: ConnectionError\).*server is running"):
        judge.judge_many([("q", "x", "y")])
    assert sleeps == [0.25, 0.5, 0.6]  # doubling, capped
    assert judge.requests_made == 4


def test_client_errors_name_the_fix(server_factory, tmp_path):
    srv = server_factory(lambda m: (401, "no"))
    with pytest.raises(AlarmError, match="environment variable MY_KEY"):
        Judge(config(srv.url, tmp_path, api_key_env="MY_KEY")).judge_once("q", "x", "y")
    srv = server_factory(lambda m: (404, "unknown model"))
    with pytest.raises(AlarmError, match="serves the model 'fake'"):
        Judge(config(srv.url, tmp_path)).judge_once("q", "x", "y")
    assert len(srv.requests) == 1  # a 4xx is not retried


def test_api_key_comes_from_the_named_variable_and_is_never_stored(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    srv = server_factory(lambda m: (200, "nonsense"))
    judge = Judge(config(srv.url, tmp_path, api_key_env="MY_JUDGE_KEY", parse_retries=0))
    judge.judge_pair("q", "x", "y")
    assert all(h.get("Authorization") == "Bearer sk-secret-123" for h in srv.headers)
    for f in ("cache.jsonl", "unparsed.jsonl"):
        assert "sk-secret" not in (tmp_path / f).read_text()
    assert "sk-secret" not in json.dumps(judge.stats())


def test_cache_makes_a_second_run_free(server_factory, tmp_path):
    srv = server_factory(fair_judge)
    items = [("q1", "GOOD", "bad"), ("q2", "bad", "GOOD"), ("q3", "MUDDLE", "MUDDLE 2")]
    first = Judge(config(srv.url, tmp_path)).judge_many(items)
    n = len(srv.requests)
    again = Judge(config(srv.url, tmp_path))
    second = again.judge_many(items)
    assert len(srv.requests) == n and again.requests_made == 0
    assert [o.outcome for o in first] == [o.outcome for o in second]
    assert all(o.first.cached and o.second.cached for o in second)
    # a different judge model is a different key
    other = Judge(JudgeConfig(base_url=srv.url, model="other", cache_path=str(tmp_path / "cache.jsonl")))
    other.judge_once("q1", "GOOD", "bad")
    assert other.requests_made == 1


def test_interrupted_run_resumes_from_the_cache(server_factory, tmp_path):
    state = {"alive": 5}

    def dying(messages):
        if state["alive"] <= 0:
            return 500, "down"
        state["alive"] -= 1
        return fair_judge(messages)

    srv = server_factory(dying)
    items = [(f"q{i}", "GOOD", "bad") for i in range(6)]  # 12 judgments
    with pytest.raises(AlarmError, match="failed"):
        Judge(config(srv.url, tmp_path, max_retries=1, concurrency=1)).judge_many(items)
    cached = len((tmp_path / "cache.jsonl").read_text().splitlines())
    assert cached == 5
    with (tmp_path / "cache.jsonl").open("a") as f:
        f.write('{"key": "cut-off mid-wri')  # an interrupted append must not break the resume
    state["alive"] = 100
    before = len(srv.requests)
    judge = Judge(config(srv.url, tmp_path))
    outcomes = judge.judge_many(items)
    assert len(srv.requests) - before == judge.requests_made == 12 - cached
    assert [o.outcome for o in outcomes] == ["win"] * 6


# ---------------------------------------------------------------------------------------------------------
# The commands


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    tiny.causal_lm(0).save_pretrained(d)
    tiny.tokenizer().save_pretrained(d)
    return d


def test_generate_is_batched_and_resumable(tiny_policy, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"Question {i}: what?", "topic": i}
                                                 for i in range(5)])
    out = tmp_path / "gen.jsonl"
    base = ["generate", "--policy", str(tiny_policy), "--prompts", str(prompts), "--out", str(out),
            "--max-new-tokens", "4", "--batch-size", "4", "--sample", "--num-samples", "2"]
    assert run([*base, "--max-prompts", "2"]) == 0
    first = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["prompt_id"], r["sample"]) for r in first] == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    assert first[0]["topic"] == 0 and first[0]["prompt"] == "Question 0: what?"
    with pytest.raises(AlarmError, match="--resume"):
        run(base)
    with pytest.raises(AlarmError, match="different settings.*max_new_tokens"):
        run([*base, "--max-new-tokens", "5", "--resume"])  # the last --max-new-tokens wins
    with out.open("a") as f:  # a run killed mid-write
        f.write(json.dumps({"prompt_id": "p2", "sample": 0, "prompt": "x", "completion": "y"}) + "\n" + '{"prompt_id": "p2", "sa')
    assert run([*base, "--resume"]) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records[:4] == first  # kept, not regenerated
    assert sorted((r["prompt_id"], r["sample"]) for r in records) == [(f"p{i}", s) for i in range(5) for s in (0, 1)]


def test_generate_greedy_qa_prompts(tiny_policy, tmp_path):
    out = tmp_path / "qa.jsonl"
    assert run(["generate", "--policy", str(tiny_policy), "--out", str(out), "--max-prompts", "3",
                "--max-new-tokens", "3"]) == 0  # the packaged quickstart set, test split
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 3 and {"question", "passages", "reference", "split"} <= set(records[0])
    assert all(r["split"] == "test" and r["sample"] == 0 for r in records)
    with pytest.raises(AlarmError, match="add --sample"):
        run(["generate", "--policy", str(tiny_policy), "--out", str(tmp_path / "x.jsonl"), "--num-samples", "2"])


def test_score_raw_normalised_and_fit(tmp_path):
    gens = write_jsonl(tmp_path / "sys.jsonl", [
        {"prompt_id": str(i), "sample": 0, "prompt": "q", "completion": c}
        for i, c in enumerate(["One two three.", "One.", "A longer answer with more words here.", ""])])
    rewards = tmp_path / "rewards.yaml"
    rewards.write_text("holistic: {type: length, unit: chars}\naspects:\n  words: {type: length}\n"
                       "  readability: {type: readability}\nnormalize: [holistic, words]\n")
    assert run(["score", str(gens), "--rewards", str(rewards), "--fit", "--out-dir", str(tmp_path / "s")]) == 0
    scored = [json.loads(x) for x in (tmp_path / "s" / "sys.scored.jsonl").read_text().splitlines()]
    chars = [14.0, 4.0, 37.0, 0.0]
    mean = sum(chars) / 4
    std = math.sqrt(sum((c - mean) ** 2 for c in chars) / 3)
    assert [s["scores"]["holistic"] for s in scored] == chars
    assert [s["scores"]["holistic.z"] for s in scored] == pytest.approx([(c - mean) / std for c in chars])
    assert scored[3]["scores"]["readability"] is None and "readability.z" not in scored[0]["scores"]
    meta = json.loads((tmp_path / "s" / "sys.scored.jsonl.meta.json").read_text())
    assert meta["metrics"]["words.z"]["higher_is_better"] is True
    # reuse the fitted normalisers on another file
    assert run(["score", str(gens), "--rewards", str(rewards), "--normalizers", str(tmp_path / "s" / "normalizers.json"),
                "--out", str(tmp_path / "again.jsonl")]) == 0
    again = [json.loads(x) for x in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [a["scores"] for a in again] == [s["scores"] for s in scored]
    bad = tmp_path / "bad.yaml"
    bad.write_text("aspects:\n  w: {type: length, units: words}\n")
    with pytest.raises(AlarmError, match="units"):
        run(["score", str(gens), "--rewards", str(bad)])


def test_select_command_matches_the_library(tmp_path):
    from alarm.select import compute_stats, pairs_from_samples

    h = [(5, 1), (3, 3), (2, 4), (4, 4), (1, 2), (7, 0)]
    m = [(0.9, 0.1), (0.2, 0.8), (0.5, 0.5), (0.3, 0.7), (0.4, 0.6), (0.1, 0.2)]
    e = [(1, 2), (2, 2), (3, 1), (0, 1), (5, 4), (2, 3)]  # lower is better
    recs = [_rec(str(i), "r", s, holistic=h[i][s], m=m[i][s], err=e[i][s]) for i in range(6) for s in (0, 1)]
    f = write_jsonl(tmp_path / "two.jsonl", recs)
    assert run(["select", str(f), "--lower-is-better", "err", "--max-conflict", "0.3",
                "--out-dir", str(tmp_path / "o")]) == 0
    out = json.loads((tmp_path / "o" / "selection.json").read_text())
    flat = [{"prompt_id": r["prompt_id"], **r["scores"]} for r in recs]
    expected = compute_stats(*pairs_from_samples(flat), higher_is_better={"err": False})
    for name in ("m", "err"):
        assert out["aspects"][name]["conflict"] == pytest.approx(expected[name].conflict)
        assert out["aspects"][name]["higher_is_better"] == (name != "err")
    assert out["aspects"]["m"]["conflict"] == pytest.approx(1 / 4)
    assert out["aspects"]["err"]["conflict"] == 0.0  # unflipped it would conflict on all 4 decisive pairs
    assert out["kept"] == ["err", "m"]
    assert (tmp_path / "o" / "selection.png").stat().st_size > 1000
    assert "| m |" in (tmp_path / "o" / "selection.md").read_text()


def test_compare_command_with_judge_and_missing_prompts(server_factory, tmp_path):
    srv = server_factory(fair_judge)
    a = write_jsonl(tmp_path / "a.jsonl", [_rec("1", "GOOD a", r=2.0), _rec("2", "GOOD b", r=1.0), _rec("3", "c", r=0.0)])
    b = write_jsonl(tmp_path / "b.jsonl", [_rec("1", "bad", r=1.0), _rec("2", "bad", r=1.0)])
    out = tmp_path / "cmp"
    base = ["compare", str(a), str(b), "--out-dir", str(out)]
    with pytest.raises(AlarmError, match="b lacks 1.*--allow-missing"):
        run(base)
    judge = ["--judge-url", srv.url, "--judge-model", "fake", "--judge-api-key-env", "NO_SUCH_VAR_XYZ"]
    assert run([*base, "--allow-missing", *judge]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["excluded_prompts"] == {"a": 1, "b": 0} and res["excluded_prompt_ids"]["a"] == ["3"]
    assert res["pairs"]["a vs b"]["metrics"]["r"]["win_rate"] == 1.0  # 1 win, 1 tie
    assert res["judge"]["pairs"]["a vs b"]["wins"] == 2 and res["judge"]["requests"] == 4
    report = (out / "report.md").read_text()
    assert "Student-t" in report and "left out" in report and "LLM judge" in report
    assert (out / "means.png").exists() and (out / "win_rates.png").exists()
    assert run([*base, "--allow-missing", *judge]) == 0  # rerun: every verdict from the cache
    assert json.loads((out / "compare.json").read_text())["judge"]["requests"] == 0
    assert len(srv.requests) == 4


def test_compare_refuses_a_key_in_place_of_its_variable_name(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [_rec("1", "x", r=1.0)])
    b = write_jsonl(tmp_path / "b.jsonl", [_rec("1", "y", r=0.0)])
    with pytest.raises(AlarmError, match="NAME of an environment variable") as e:
        run(["compare", str(a), str(b), "--out-dir", str(tmp_path / "o"), "--judge-url", "http://127.0.0.1:1/v1",
             "--judge-model", "m", "--judge-api-key-env", "sk-live-abc123"])
    assert "sk-live" not in str(e.value) and "sk-live" not in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no abbreviation of --judge-api-key-env, no key flag
        run(["compare", str(a), str(b), "--out-dir", "o", "--judge-api-key", "sk-live-abc123"])


def test_generate_from_a_ppo_run(tiny_policy, tmp_path):
    import torch
    from test_ppo import trainer

    from alarm.evaluation.commands import load_policy

    trainer(tmp_path / "run", steps=1, model=tiny.causal_lm(0), learning_rate=5e-2).train(progress=False)
    model, _, described = load_policy(str(tmp_path / "run"), base_model=str(tiny_policy))
    assert "step-000001" in described
    base = tiny.causal_lm(0)
    name = next(n for n, _ in base.named_parameters() if "q_proj" in n)
    assert not torch.allclose(dict(model.named_parameters())[name], dict(base.named_parameters())[name])  # merged
    out = tmp_path / "g.jsonl"
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "The quick"}])
    assert run(["generate", "--policy", str(tmp_path / "run"), "--base-model", str(tiny_policy), "--prompts",
                str(prompts), "--out", str(out), "--max-new-tokens", "3"]) == 0
    assert json.loads(out.read_text())["prompt_id"] == "a"
