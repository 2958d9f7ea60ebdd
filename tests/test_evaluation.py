"""Evaluation: statistics against hand-computed values, the judge's bookkeeping against a fake OpenAI-compatible
server (canned replies, unparseable ones, a dead endpoint, the cache, an interrupted run), and the commands.
Verdict parsing has its own table in test_judge_parsing.py."""

from __future__ import annotations

import argparse
import json
import math
import re
import socket

import numpy as np
import pytest
import tiny
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from alarm.errors import AlarmError
from alarm.evaluation.compare import (
    align_systems,
    compare_systems,
    mean_ci,
    report_markdown,
    wilson_interval,
    win_counts,
    win_rate_interval,
    win_rate_matrix,
)
from alarm.evaluation.judge import Judge, JudgeConfig, PairOutcome, combine_orders, summarize_outcomes
from alarm.recipes.evaluation import add_commands, default_aspects
from alarm.rewards.base import Dense, summarize_dense

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
    with pytest.raises(AlarmError, match="--n-boot"):
        win_rate_interval([1, -1], n_boot=0)


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
    assert ties.win_rate is None and ties.pct_low is None and ties.pct_high is None
    assert (ties.win_rate_pct, ties.decisive) == (50.0, 0)  # the paper's convention when nothing is decisive


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
# The paper's win rates, their bootstrap intervals and the win-rate matrix


def _paper(signs) -> float:
    w, losses = int(np.sum(np.asarray(signs) > 0)), int(np.sum(np.asarray(signs) < 0))
    return 100.0 * w / (w + losses) if w + losses else 50.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-1, 0, 1]), min_size=1, max_size=40), st.integers(0, 5))
def test_paper_win_rate_and_its_interval(signs, seed):
    pct, low, high = win_rate_interval(signs, n_boot=200, seed=seed)
    assert pct == pytest.approx(_paper(signs))
    assert win_rate_interval(signs, n_boot=200, seed=seed) == (pct, low, high)  # seeded
    mirror = win_rate_interval([-s for s in signs], n_boot=200, seed=seed)
    assert mirror[0] == pytest.approx(100 - pct)
    if pct == 50.0 and not any(signs):
        assert (low, high) == (None, None) and mirror[1:] == (None, None)
    else:  # the other side's interval is the mirror image: same resamples of the prompts
        assert 0.0 <= low <= high <= 100.0
        assert (mirror[1], mirror[2]) == (pytest.approx(100 - high), pytest.approx(100 - low))


def test_win_rate_interval_agrees_with_scipy_percentile_bootstrap_over_prompts():
    signs = np.random.default_rng(5).choice([-1, 0, 1], size=60, p=[0.3, 0.3, 0.4])
    pct, low, high = win_rate_interval(signs, n_boot=4000, seed=0)
    ref = sps.bootstrap((signs,), _paper, vectorized=False, n_resamples=4000, method="percentile", rng=0)
    assert pct == pytest.approx(_paper(signs))
    assert low == pytest.approx(ref.confidence_interval.low, abs=2.0)
    assert high == pytest.approx(ref.confidence_interval.high, abs=2.0)
    # more prompts with the same proportions: a narrower interval
    _, low4, high4 = win_rate_interval(np.tile(signs, 4), n_boot=4000, seed=0)
    assert high4 - low4 < 0.7 * (high - low)


def test_win_rate_matrix_by_hand():
    r = {"a": [3, 1, 2, 2], "b": [1, 1, 3, 0], "c": [0, 0, 0, 5]}
    recs = {s: [_rec(str(i), s, r=float(v)) for i, v in enumerate(vals)] for s, vals in r.items()}
    res = compare_systems(align_systems(recs), ["r"], n_boot=500)
    m = res["matrices"]["r"]
    # a vs b: win, tie, loss, win (2–1); a vs c: 3–1; b vs c: 3–1
    cells = {(x, y): c["win_rate_pct"] for x, row in m["cells"].items() for y, c in row.items()}
    assert cells == pytest.approx({("a", "b"): 200 / 3, ("b", "a"): 100 / 3, ("a", "c"): 75.0, ("c", "a"): 25.0,
                                   ("b", "c"): 75.0, ("c", "b"): 25.0})
    assert (m["cells"]["a"]["b"]["decisive"], m["cells"]["a"]["b"]["ties"]) == (3, 1)
    assert {s: a["win_rate_pct"] for s, a in m["avg"].items()} == pytest.approx(
        {"a": (200 / 3 + 75) / 2, "b": (100 / 3 + 75) / 2, "c": 25.0})
    assert m["avg"]["a"]["decisive"] == 3 + 4
    # one resampling of the prompts for everything: the pair table and the matrix give the same interval
    pair = res["pairs"]["a vs b"]["metrics"]["r"]
    assert (pair["win_rate_pct"], pair["pct_low"], pair["pct_high"]) == (
        pytest.approx(200 / 3), m["cells"]["a"]["b"]["pct_low"], m["cells"]["a"]["b"]["pct_high"])


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(1, 12), st.randoms(use_true_random=False))
def test_win_rate_matrix_properties(n_systems, n_prompts, rnd):
    systems = [f"s{i}" for i in range(n_systems)]
    signs = {(x, y): [rnd.choice([-1, 0, 1]) for _ in range(n_prompts)]
             for i, x in enumerate(systems) for y in systems[i + 1:]}
    m = win_rate_matrix(systems, signs, n_boot=100, seed=1)
    for (x, y), sg in signs.items():
        assert m["cells"][x][y]["win_rate_pct"] == pytest.approx(_paper(sg))
        assert m["cells"][x][y]["win_rate_pct"] + m["cells"][y][x]["win_rate_pct"] == pytest.approx(100.0)
        assert m["cells"][x][y]["decisive"] == m["cells"][y][x]["decisive"] == sum(s != 0 for s in sg)
    for x in systems:
        assert x not in m["cells"][x]  # no diagonal
        a = m["avg"][x]
        assert a["win_rate_pct"] == pytest.approx(np.mean([m["cells"][x][y]["win_rate_pct"] for y in systems if y != x]))
        assert a["pct_low"] is None or 0.0 <= a["pct_low"] <= a["pct_high"] <= 100.0
    assert np.mean([m["avg"][x]["win_rate_pct"] for x in systems]) == pytest.approx(50.0)  # zero-sum


def test_report_has_the_papers_matrix_with_intervals():
    r = {"a": [3, 1, 2, 2], "b": [1, 1, 3, 0], "c": [0, 0, 0, 5]}
    recs = {s: [_rec(str(i), s, r=float(v), err=float(-v)) for i, v in enumerate(vals)] for s, vals in r.items()}
    res = compare_systems(align_systems(recs), ["r", "err"], {"err": False}, n_boot=500)
    judge = {"model": "fake", "n_prompts": 4, "pairs": {},
             "matrix": win_rate_matrix(["a", "b", "c"], {("a", "b"): [1, 1, 0, 0], ("a", "c"): [1, 0, 0, 0],
                                                         ("b", "c"): [0, 0, 0, 0]}, n_boot=500)}
    md = report_markdown(res, judge)
    assert res["ci"]["method"] == "bootstrap" and "percentile bootstrap over prompts (500 resamples" in md
    assert md.count("| | a | b | c | Avg. |") == 3  # by r, by err, by the judge
    assert "**by r (higher is better)**" in md and "**by the LLM judge fake (4 prompts)**" in md
    a_b = res["matrices"]["r"]["cells"]["a"]["b"]
    avg = res["matrices"]["r"]["avg"]["a"]
    row = (f"| a | — | 66.7 [{a_b['pct_low']:.1f}, {a_b['pct_high']:.1f}] (3) | 75.0 ["
           f"{res['matrices']['r']['cells']['a']['c']['pct_low']:.1f}, "
           f"{res['matrices']['r']['cells']['a']['c']['pct_high']:.1f}] (4) | 70.8 [{avg['pct_low']:.1f}, "
           f"{avg['pct_high']:.1f}] (7) |")
    assert row in md
    assert "| b | 33.3 [" in md and "(3) | — | 75.0 [" in md  # the diagonal is blank
    assert "| — | 50.0 [–] (0) |" in md  # judge: b vs c never decisive -> 50, no interval
    # the Avg. summary: one column per evaluator
    assert "| system | r | err | judge fake |" in md
    # lower-is-better err (= −r) ranks like r
    assert res["matrices"]["err"]["avg"]["a"]["win_rate_pct"] == pytest.approx(avg["win_rate_pct"])


# ---------------------------------------------------------------------------------------------------------
# Verdict parsing and both-orders bookkeeping


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
    assert s["ties_by_reason"] == {"disagree": 0, "both_tie": 1, "unparsed": 1, "identical": 0}
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
    srv.script = lambda m: (200, "[[A]]")
    judge.judge_pair("q2", "x", "y")
    assert all(h.get("Authorization") == "Bearer sk-secret-123" for h in srv.headers)
    for f in ("cache.jsonl", "unparsed.jsonl"):
        assert "sk-secret" not in (tmp_path / f).read_text()
    assert "sk-secret" not in json.dumps(judge.stats())


def test_cache_makes_a_second_run_free(server_factory, tmp_path):
    srv = server_factory(fair_judge)
    items = [("q1", "GOOD", "bad"), ("q2", "bad", "GOOD"), ("q3", "plain", "plain 2")]
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


def test_identical_generations_are_ties_without_a_request(server_factory, tmp_path):
    srv = server_factory(lambda m: (200, "[[A]]"))
    judge = Judge(config(srv.url, tmp_path))
    outcomes = judge.judge_many([("q1", "same answer", "same answer"), ("q2", "x", "y"), ("q3", "z ", "z")])
    assert [o.reason for o in outcomes] == ["identical", "disagree", "identical"]
    assert [o.outcome for o in outcomes] == ["tie"] * 3
    assert len(srv.requests) == judge.requests_made == 2  # only q2, in both orders
    assert judge.judge_pair("q4", "same", "same").reason == "identical" and len(srv.requests) == 2
    s = summarize_outcomes(outcomes)
    assert s["ties_by_reason"] == {"disagree": 1, "both_tie": 0, "unparsed": 0, "identical": 2}
    assert (s["verdicts"], s["position_consistency"]) == (2, 0.0)  # counted over the pairs actually asked


def test_unparsed_verdicts_are_not_cached_so_a_rerun_asks_again(server_factory, tmp_path):
    srv = server_factory(lambda m: (200, "Hmm, hard to say."))
    first = Judge(config(srv.url, tmp_path, parse_retries=0)).judge_pair("q", "x", "y")
    assert first.reason == "unparsed"
    cache = tmp_path / "cache.jsonl"
    assert not cache.exists() or all(json.loads(x)["verdict"] for x in cache.read_text().splitlines())
    srv.script = lambda m: (200, "Output (a) is better")
    again = Judge(config(srv.url, tmp_path, parse_retries=0))
    o = again.judge_pair("q", "x", "y")
    assert again.requests_made == 2 and (o.first.verdict, o.second.verdict) == ("A", "A")
    assert not o.first.cached
    # an older cache that kept an unparsed verdict as final is not trusted either
    key = again.key("q3", "x", "y")
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"key": key, "model": "fake", "verdict": None, "replies": ["?"]}) + "\n")
    judge = Judge(config(srv.url, tmp_path, cache_path=str(old)))
    assert key not in judge.cache
    assert judge.judge_once("q3", "x", "y").verdict == "A" and judge.requests_made == 1


def test_a_forced_function_call_reply_is_read(server_factory, tmp_path):
    """The paper's judge answers through print_best_model; the verdict is in tool_calls, not in content."""
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "print_best_model", "arguments": json.dumps({"best_output": "Output (b)"})}}]}
    srv = server_factory(lambda m: (200, call))
    j = Judge(config(srv.url, tmp_path)).judge_once("q", "x", "y")
    assert j.verdict == "B" and j.attempts == 1
    assert j.replies == ['print_best_model({"best_output": "Output (b)"})']


def test_a_tie_in_one_order_and_b_in_the_other_is_a_tie_end_to_end(server_factory, tmp_path):
    srv = server_factory(lambda m: (200, "My verdict is a tie." if shown(m)[0] == "X" else "[[B]]"))
    o = Judge(config(srv.url, tmp_path)).judge_pair("q", "X", "Y")
    assert (o.first.verdict, o.second.verdict, o.outcome) == ("tie", "B", "tie")


def test_judge_summary_reports_the_papers_win_rate_with_an_interval():
    def outcome(kind):
        from alarm.evaluation.judge import Judgment

        v1, v2 = {"win": ("A", "B"), "loss": ("B", "A"), "tie": ("tie", "tie")}[kind]
        return PairOutcome(kind, Judgment("k1", v1, [v1], 1), Judgment("k2", v2, [v2], 1))

    kinds = ["win"] * 6 + ["loss"] * 2 + ["tie"] * 4
    s = summarize_outcomes([outcome(k) for k in kinds], n_boot=500, seed=2)
    assert (s["win_rate_pct"], s["decisive"], s["win_rate"]) == (75.0, 8, 0.75)
    assert (s["pct_low"], s["pct_high"]) == win_rate_interval([1] * 6 + [-1] * 2 + [0] * 4, 500, 2)[1:]
    none = summarize_outcomes([outcome("tie")] * 3)
    assert (none["win_rate_pct"], none["decisive"], none["pct_low"], none["win_rate"]) == (50.0, 0, None, None)


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
    from alarm.selection import compute_stats, pairs_from_samples

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
    assert "percentile bootstrap" in report and "left out" in report and "LLM judge" in report
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

    from alarm.models import load_policy, policy_checkpoint

    trainer(tmp_path / "run", steps=1, model=tiny.causal_lm(0), learning_rate=5e-2).train(progress=False)
    model, _ = load_policy(str(tmp_path / "run"), base_model=str(tiny_policy))
    assert policy_checkpoint(str(tmp_path / "run")).name == "step-000001"
    base = tiny.causal_lm(0)
    name = next(n for n, _ in base.named_parameters() if "q_proj" in n)
    assert not torch.allclose(dict(model.named_parameters())[name], dict(base.named_parameters())[name])  # merged
    out = tmp_path / "g.jsonl"
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "The quick"}])
    assert run(["generate", "--policy", str(tmp_path / "run"), "--base-model", str(tiny_policy), "--prompts",
                str(prompts), "--out", str(out), "--max-new-tokens", "3"]) == 0
    assert json.loads(out.read_text())["prompt_id"] == "a"


def test_compare_command_writes_the_papers_matrices_for_rewards_and_judge(server_factory, tmp_path):
    srv = server_factory(fair_judge)
    files = [write_jsonl(tmp_path / f"{name}.jsonl", [_rec(str(i), text, r=float(v)) for i, (text, v) in enumerate(rows)])
             for name, rows in {"a": [("GOOD 1", 2), ("GOOD 2", 3), ("same", 1)],
                                "b": [("bad", 1), ("GOOD 3", 3), ("same", 0)],
                                "c": [("bad", 0), ("bad", 1), ("same", 2)]}.items()]
    out = tmp_path / "cmp"
    assert run(["compare", *map(str, files), "--out-dir", str(out), "--n-boot", "300", "--judge-url", srv.url,
                "--judge-model", "fake", "--judge-api-key-env", "NO_SUCH_VAR_XYZ"]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["ci"] == {"method": "bootstrap", "confidence": 0.95, "n_boot": 300, "seed": 0}
    # identical texts (prompt 2 everywhere, b vs c on prompt 0) are never sent; a vs b and a vs c share one
    # pair on prompt 0 (GOOD 1 vs bad), read from the cache: 5 pairs asked, 4 distinct, 8 requests
    assert res["judge"]["requests"] == 8
    jm = res["judge"]["matrix"]
    assert jm["cells"]["a"]["c"]["win_rate_pct"] == 100.0 and jm["cells"]["a"]["c"]["decisive"] == 2
    assert jm["cells"]["a"]["b"]["decisive"] == 1  # prompt 1 GOOD vs GOOD ties, prompt 0 a wins
    assert jm["avg"]["a"]["win_rate_pct"] == 100.0
    assert res["matrices"]["r"]["cells"]["c"]["a"]["win_rate_pct"] == pytest.approx(100 / 3)
    report = (out / "report.md").read_text()
    assert report.count("| | a | b | c | Avg. |") == 2 and "Win rates (the paper's layout)" in report
    cell = lambda c: f"{c['win_rate_pct']:.1f} [{c['pct_low']:.1f}, {c['pct_high']:.1f}] ({c['decisive']})"  # noqa: E731
    assert f"| a | — | {cell(jm['cells']['a']['b'])} | {cell(jm['cells']['a']['c'])} | {cell(jm['avg']['a'])} |" in report
    assert jm["cells"]["a"]["b"]["pct_low"] == 50.0  # one decisive pair of three: some resamples have none
    assert "| system | r | judge fake |" in report


def test_run_report_gives_intervals_and_decisive_pairs(tmp_path, capsys):
    from alarm.config import load_recipe
    from alarm.recipes.ppo import print_summary, win_rate, write_report

    initial = [0.1, 0.5, 0.2, 0.9, 0.4, None]
    trained = [0.3, 0.5, 0.1, 1.2, 0.8, 0.7]  # win, tie, loss, win, win, n/a
    w = win_rate(trained, initial)
    assert (w["win_rate_pct"], w["decisive"], w["wins"], w["losses"]) == (75.0, 4, 3, 1)
    cis = {s: {"r": {k: getattr(mean_ci(v, method="bootstrap"), k) for k in ("low", "high", "n")}}
           for s, v in (("initial", initial), ("trained", trained))}
    result = {"n_prompts": 6, "win_rates": {"r": w}, "mean_ci": cis,
              "means": {"initial": {"r": float(np.mean(initial[:5]))}, "trained": {"r": float(np.mean(trained))}}}
    report = write_report(load_recipe(None, ["name=t"]), tmp_path, [], result, None, {}).read_text()
    assert f"75.0 [{w['pct_low']:.1f}, {w['pct_high']:.1f}] (4: 3–1, 1 ties)" in report
    for values in (initial, trained):
        c = mean_ci(values, method="bootstrap")
        assert f"{c.mean:.3f} [{c.low:.3f}, {c.high:.3f}]" in report
    print_summary(result)
    printed = capsys.readouterr().out
    assert f"{w['pct_low']:.1f}" in printed and "3–1" in printed
