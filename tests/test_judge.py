"""alarm.evaluation.judge: verdict parsing on replies in the styles real judges write (GPT-style, small chat
models, the paper's forced function call; the article "a" is never verdict A), and the both-orders bookkeeping
against a fake OpenAI-compatible server: retries, the cache, unparsed replies, the key."""

from __future__ import annotations

import json
import re
import socket

import pytest

from alarm.errors import AlarmError
from alarm.evaluation.compare import (
    win_rate_interval,
)
from alarm.evaluation.judge import (
    Judge,
    JudgeConfig,
    PairOutcome,
    combine_orders,
    parse_verdict,
    summarize_outcomes,
)

REPLIES = [
    # the article "a" is not verdict A
    ("My verdict is a tie.", "tie"),
    ("The better response is a bit longer but B is correct.", None),
    ("Verdict: A tie.", "tie"),
    ("It's a tie: both answers cite the passage.", "tie"),
    ("A tie.", "tie"),
    ("This is a difficult one, as both answers have a flaw.", None),
    ("Response A gives a date; Response B gives a place. Neither is better.", None),
    ("A bit of both.", None),
    # the format the prompt asks for
    ("Response A is clearer. [[A]]", "A"),
    ("Final verdict: [[B]]", "B"),
    ("[[ b ]]", "B"),
    ("Both are equally good. [[C]]", "tie"),
    ("Response A is more detailed, but Response B is correct. [[B]]", "B"),
    ("I think [[A]] ... no wait, [[B]]", None),  # conflicting: never pick one
    # small-model styles
    ("[A]", "A"),
    ("The answer is: [C]", "tie"),
    ("**Output (b)**", "B"),
    ("Output (a) is better", "A"),
    ("Output (a) is longer, but Output (b) is better.", "B"),
    ("output (b)", "B"),
    ("(a)", "A"),
    ("**B**", "B"),
    ("A", "A"),
    ("b.", "B"),
    ("Response B.", "B"),
    ("tie", "tie"),
    ("Tie.", "tie"),
    ("A. It answers the question directly.", "A"),
    # the paper's forced function call (AlpacaFarm's print_best_model), as text or as the tool call we render
    ('print_best_model(best_output="Output (a)")', "A"),
    ('print_best_model({"best_output": "Output (b)"})', "B"),
    ('{"name": "print_best_model", "arguments": "{\\"best_output\\": \\"Output (b)\\"}"}', "B"),
    # labels and claims
    ("Verdict: B", "B"),
    ("verdict: b", "B"),
    ("**Verdict:** Response A", "A"),
    ("The answer is B.", "B"),
    ("Winner: Response A, because it cites the passage.", "A"),
    ("The winner is B", "B"),
    ("The better response is Response B because it is grounded.", "B"),
    ("Assistant B is better.", "B"),
    ("B is the better response.", "B"),
    ("A is a better answer than B.", "A"),
    ("Both are fine, but I prefer Response A.", "A"),
    ("A: 6/10. B: 9/10. B wins.", "B"),
    ("Verdict: A\nOutput (b) is worse.", "A"),
    ("Response A is not better than Response B in any way.", None),
    ("Neither A nor B is better.", None),
    ("A is better. B is better.", None),
    # a verdict named in a negated or negative clause is never one for that answer (when in doubt, none)
    ("Answer B is worse than A.", None),
    ("My choice: A is weaker, so B.", None),
    ("Decision: B is inferior.", None),
    ("I would not choose B.", None),
    ("I wouldn't pick Response A.", None),
    ("I do not prefer Output (b).", None),
    ("Verdict: A is wrong and B is right.", None),
    ("The winner is not A.", None),
    ("Response A is no better than B.", None),
    ("Output (a) is less accurate, so I choose neither.", None),
    ("Answer A is the better one.", "A"),  # "Answer A" names an answer; "is the better" still decides
    ("The answer is A, because B is wrong.", "A"),  # the negative clause is about the other answer
    ("Verdict: B. Answer A is weaker.", "B"),
    ("B is better. A is worse.", "B"),
    ("[[A]] Answer B is worse.", "A"),
    # no verdict at all
    ("[Response A] is fine", None),  # an echo of the prompt's section header
    ("Both responses have merits.", None),
    ("Let me think about it.", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize("reply, verdict", REPLIES)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_table_is_large_and_covers_every_verdict():
    assert len(REPLIES) >= 30
    assert {v for _, v in REPLIES} == {"A", "B", "tie", None}


@pytest.mark.parametrize("tie_reply", ["My verdict is a tie.", "Verdict: A tie.", "It's a tie."])
def test_a_tie_in_one_order_and_b_in_the_other_is_not_a_win(tie_reply):
    # X shown as A: the judge ties; X shown as B: the judge prefers B (= X). One order only: a tie overall.
    assert combine_orders(parse_verdict(tie_reply), parse_verdict("[[B]]")) == "tie"
    assert combine_orders(parse_verdict("[[A]]"), parse_verdict(tie_reply)) == "tie"


@pytest.mark.parametrize("article", ["a", "A"])
@pytest.mark.parametrize("frame", ["The better response is {} bit longer.", "My verdict is {} close call.",
                                   "Verdict: {} lot of detail in both."])
def test_an_article_after_a_label_is_never_verdict_a(frame, article):
    assert parse_verdict(frame.format(article)) is None


# X wins in both orders, but the judge says so by naming the loser: "<loser> is worse". Read backwards, the pair
# was recorded as a loss for X; it must never be (no verdict: a tie, and the judge is asked again).
NEGATIVE_FRAMES = ["Answer {loser} is worse than {winner}.", "My choice: {loser} is weaker, so {winner}.",
                   "Decision: {loser} is inferior.", "I would not choose {loser}.",
                   "Verdict: {loser} is wrong."]


@pytest.mark.parametrize("frame", NEGATIVE_FRAMES)
def test_a_judge_naming_the_worse_answer_in_both_orders_never_gives_the_other_a_win(frame):
    first = parse_verdict(frame.format(loser="B", winner="A"))  # X shown as A, Y as B
    second = parse_verdict(frame.format(loser="A", winner="B"))  # X shown as B, Y as A
    assert first in (None, "A") and second in (None, "B")  # never a verdict for the answer called worse
    assert combine_orders(first, second) != "loss"


@pytest.mark.parametrize("frame", NEGATIVE_FRAMES)
def test_negative_replies_end_to_end_through_the_judge(server_factory, frame):
    """Both orders through a fake endpoint: the judge names Y (the worse answer) wherever it is shown."""
    def reply(messages):
        first, _ = shown(messages)
        loser, winner = ("B", "A") if first == "X" else ("A", "B")
        return 200, frame.format(loser=loser, winner=winner)

    srv = server_factory(reply)
    judge = Judge(JudgeConfig(base_url=srv.url, model="fake", parse_retries=0), sleep=lambda s: None)
    o = judge.judge_pair("q", "X", "Y")
    assert o.outcome != "loss" and o.first.verdict in (None, "A") and o.second.verdict in (None, "B")


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


