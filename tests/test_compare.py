"""alarm.evaluation.compare: means and intervals, win rates (the paper's and their bootstrap intervals), the
win-rate matrix, aligning systems — against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
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
from alarm.recipes.evaluation import default_aspects
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




@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0, 2.0, None]), st.sampled_from([0.0, 1.0, 2.0])),
                min_size=1, max_size=12))
@settings(max_examples=40, deadline=None)
def test_the_other_side_of_a_win_count_is_its_reverse_comparison(pairs):
    from dataclasses import asdict

    from alarm.evaluation.compare import other_side

    x, y = [a for a, _ in pairs], [b for _, b in pairs]
    got, want = other_side(asdict(win_counts(x, y, n_boot=200))), asdict(win_counts(y, x, n_boot=200))
    assert (got["wins"], got["losses"], got["ties"], got["decisive"]) == \
        (want["wins"], want["losses"], want["ties"], want["decisive"])
    for k in ("win_rate", "win_rate_pct", "pct_low", "pct_high", "mean_diff", "diff_low", "diff_high"):
        assert (got[k] is None) == (want[k] is None) and (got[k] is None or abs(got[k] - want[k]) < 1e-9), k


def test_the_paired_difference_by_hand():
    w = win_counts([1.0, 2.0, 3.0, None], [0.0, 0.0, 5.0, 1.0], n_boot=500)
    assert w.mean_diff == pytest.approx(1 / 3)  # (1 + 2 − 2) / 3: the prompt without x is left out
    assert w.diff_low < w.mean_diff < w.diff_high and w.diff_low >= -2 and w.diff_high <= 2
    assert win_counts([1.0, None], [None, 2.0]).mean_diff is None
    # lower-is-better flips the win rate, not the difference
    assert win_counts([1.0, 2.0], [0.0, 0.0], higher_is_better=False).mean_diff == pytest.approx(1.5)


def test_a_paired_difference_whose_draws_all_miss_the_shared_prompts_has_no_interval():
    x, y = [1.0] + [None] * 49, [0.0] * 50  # one shared prompt; one resample misses it about a third of the time
    got = [win_counts(x, y, n_boot=1, seed=s) for s in range(12)]
    assert all(w.mean_diff == 1.0 for w in got)
    assert any(w.diff_low is None for w in got) and any(w.diff_low == 1.0 for w in got)


@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5)), min_size=2, max_size=15), st.floats(-3, 3))
@settings(max_examples=40, deadline=None)
def test_the_paired_difference_moves_with_a_constant_and_its_interval_too(pairs, c):
    from alarm.evaluation.compare import paired_difference

    x, y = [a for a, _ in pairs], [b for _, b in pairs]
    mean, low, high = paired_difference(x, y, n_boot=300)
    assert mean == pytest.approx(float(np.mean(np.subtract(x, y))), abs=1e-9)
    assert low - 1e-9 <= mean <= high + 1e-9
    shifted = paired_difference([a + c for a in x], y, n_boot=300)
    for got, want in zip(shifted, (mean, low, high)):
        assert got == pytest.approx(want + c, abs=1e-6)


def test_the_judge_reads_passage_text_not_the_records_dicts():
    """QA-Feedback policy records carry passages as {wikipage, content}; the judge was shown their repr."""
    from alarm.evaluation.compare import judge_question

    shown = judge_question({"question": "Where is Basel?", "passages": [{"wikipage": "Basel", "content": "Basel is in Switzerland."},
                                                                        "A plain passage."]})
    assert shown == "Passages:\n[1] Basel is in Switzerland.\n[2] A plain passage.\n\nQuestion: Where is Basel?"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=20), st.integers(2, 4),
       st.integers(0, 1000))
def test_cluster_bootstrap_of_copies_equals_the_bootstrap_of_the_originals(values, copies, seed):
    """A question answered identically under several seeds is one observation, not several: drawing whole
    clusters of the copies gives the originals' intervals draw for draw; drawing the copies as units is narrower."""
    from alarm.evaluation.compare import mean_ci, win_rate_interval

    copied = [v for v in values for _ in range(copies)]
    labels = [i for i in range(len(values)) for _ in range(copies)]
    alone = mean_ci(values, "bootstrap", n_boot=400, seed=seed)
    clustered = mean_ci(copied, "bootstrap", n_boot=400, seed=seed, clusters=labels)
    assert (clustered.low, clustered.high) == pytest.approx((alone.low, alone.high))
    signs = [1 if v > 0 else -1 if v < 0 else 0 for v in values]
    if any(signs):
        assert win_rate_interval([s for s in signs for _ in range(copies)], 400, seed, clusters=labels) == \
            pytest.approx(win_rate_interval(signs, 400, seed))


def test_compare_scored_resamples_whole_questions_when_given_clusters(tmp_path):
    from alarm.errors import AlarmError
    from alarm.evaluation.compare import compare_scored

    rng = np.random.default_rng(0)
    base = rng.normal(size=30)
    systems = {name: [{"prompt_id": f"q{i}#s{s}", "completion": "x", "scores": {"r": float(base[i] + shift)}}
                      for s in range(3) for i in range(30)] for name, shift in (("a", 0.0), ("b", 0.3))}
    clusters = {f"q{i}#s{s}": f"q{i}" for s in range(3) for i in range(30)}
    plain, _, _ = compare_scored(systems, {"r": True}, tmp_path / "plain", metrics=["r"])
    grouped, _, _ = compare_scored(systems, {"r": True}, tmp_path / "grouped", metrics=["r"], clusters=clusters)
    width = lambda m: m["high"] - m["low"]  # noqa: E731
    assert width(grouped["means"]["a"]["r"]) > 1.4 * width(plain["means"]["a"]["r"])  # ≈ √3 wider
    assert grouped["ci"]["clusters"] == 30 and plain["ci"]["clusters"] is None
    uneven = dict(clusters, **{"q0#s0": "lonely"})
    with pytest.raises(AlarmError, match="same number of prompts"):
        compare_scored(systems, {"r": True}, tmp_path / "bad", metrics=["r"], clusters=uneven)


def test_the_judges_prompt_cap_keeps_whole_clusters():
    """judge_max_prompts cut the prompt list mid-cluster (a question's seed 1 in, seeds 2-3 out), and the cluster
    bootstrap then refused the matrix after every judge call had been paid for; the cap now keeps whole clusters."""
    from alarm.evaluation.compare import align_systems, judge_systems
    from alarm.evaluation.judge import Judgment, PairOutcome

    class CountingJudge:
        asked = 0

        def judge_many(self, items, progress=None):
            self.asked += len(items)
            j = Judgment(key="k", verdict="A", replies=["A"], attempts=0)
            return [PairOutcome("win", j, j) for _ in items]

    ids = [f"q{i}#s{s}" for i in range(5) for s in range(3)]
    systems = {n: [{"prompt_id": p, "completion": f"{n} {p}", "question": "q?"} for p in ids] for n in ("a", "b")}
    clusters = {p: p.split("#")[0] for p in ids}
    judge = CountingJudge()
    result = judge_systems(judge, align_systems(systems), max_prompts=7, progress=False, clusters=clusters)
    assert result["n_prompts"] == 6 and judge.asked == 6  # two whole questions × 3 seeds, not 7 units
    assert result["matrix"]["cells"]["a"]["b"]["win_rate_pct"] == 100.0


def test_the_judges_pair_intervals_draw_whole_questions_like_its_matrix():
    """The judge's pair summary bootstrapped (question, seed) units one by one while its matrix drew whole
    questions: the same comparison got a narrower interval in one table than in the other."""
    from alarm.evaluation.compare import align_systems, judge_systems
    from alarm.evaluation.judge import Judgment, PairOutcome

    verdicts = {f"q{i}": ("win" if i % 3 else "loss") for i in range(12)}  # a question's seeds agree

    class SeededJudge:
        def judge_many(self, items, progress=None):
            j = Judgment(key="k", verdict="A", replies=["A"], attempts=0)
            return [PairOutcome(verdicts[q.split(" ")[0]], j, j) for q, _, _ in items]

    ids = [f"q{i}#s{s}" for i in range(12) for s in range(3)]
    systems = {n: [{"prompt_id": p, "completion": f"{n} {p}", "question": p.split("#")[0] + " ?"} for p in ids]
               for n in ("a", "b")}
    clusters = {p: p.split("#")[0] for p in ids}
    grouped = judge_systems(SeededJudge(), align_systems(systems), progress=False, clusters=clusters)
    plain = judge_systems(SeededJudge(), align_systems(systems), progress=False)
    pair, cell = grouped["pairs"]["a vs b"], grouped["matrix"]["cells"]["a"]["b"]
    assert (pair["pct_low"], pair["pct_high"]) == pytest.approx((cell["pct_low"], cell["pct_high"]))
    unclustered = plain["pairs"]["a vs b"]
    assert pair["pct_high"] - pair["pct_low"] > 1.3 * (unclustered["pct_high"] - unclustered["pct_low"])


def test_the_judge_can_read_only_one_systems_pairs(tmp_path):
    """The VCB paper's table is one method against each baseline: judging every pair of 7 systems costs 21
    pairs of calls for the 6 it reports. ``judge_pairs_with`` asks only those, and the report still renders."""
    from alarm.errors import AlarmError
    from alarm.evaluation.compare import compare_scored
    from alarm.evaluation.judge import Judgment, PairOutcome

    class CountingJudge:
        asked = []
        requests_made = unparsed = 0
        config = type("C", (), {"model": "fake"})()

        def judge_many(self, items, progress=None):
            self.asked.append(progress)
            j = Judgment(key="k", verdict="A", replies=["A"], attempts=0)
            return [PairOutcome("win", j, j) for _ in items]

    ids = [f"q{i}" for i in range(6)]
    systems = {n: [{"prompt_id": p, "completion": f"{n} {p}", "question": "q?", "scores": {"r": float(k)}}
                   for p in ids] for k, n in enumerate(("base", "vcb", "dpo", "ipo"))}
    judge = CountingJudge()
    _, judged, _ = compare_scored(systems, {"r": True}, tmp_path, metrics=["r"], judge=judge, progress=True,
                                  judge_pairs_with="vcb")
    assert sorted(judge.asked) == ["judge base vs vcb", "judge vcb vs dpo", "judge vcb vs ipo"]
    assert set(judged["matrix"]["cells"]["vcb"]) == {"base", "dpo", "ipo"} and "ipo" not in judged["matrix"]["cells"]["dpo"]
    assert judged["matrix"]["cells"]["vcb"]["dpo"]["win_rate_pct"] == 100.0
    assert set(judged["matrix"]["avg"]) == {"vcb"}  # the other rows hold one judged cell each: no "Avg."
    assert "| vcb | " in (tmp_path / "report.md").read_text()
    with pytest.raises(AlarmError, match="no such system"):
        compare_scored(systems, {"r": True}, tmp_path / "x", metrics=["r"], judge=judge, judge_pairs_with="ppo")


def test_clustered_bootstrap_leaves_out_draws_that_hold_no_value():
    """Draws of only missing values have no mean; they used to turn both bounds into NaN."""
    c = mean_ci([1, 2, None, None, None, None], "bootstrap", clusters=list("abcdef"))
    assert c.mean == 1.5 and c.low is not None and c.high is not None
    assert 1.0 <= c.low <= c.high <= 2.0
    c = mean_ci([None, 3.0, None, None, 4.0, None], "bootstrap", clusters=list("aabbcc"))
    assert 3.0 <= c.low <= c.high <= 4.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(-5, 5)), min_size=2, max_size=12), st.integers(0, 5))
def test_clustered_bootstrap_bounds_are_finite_and_inside_the_values(values, seed):
    held = [v for v in values if v is not None]
    c = mean_ci(values, "bootstrap", n_boot=200, seed=seed, clusters=[str(i) for i in range(len(values))])
    if len(held) >= 2:
        assert math.isfinite(c.low) and math.isfinite(c.high)
        assert min(held) - 1e-9 <= c.low <= c.high <= max(held) + 1e-9
