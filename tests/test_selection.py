"""Reward selection: every statistic against hand-computed values, the selection rules, and the reports."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from alarm.errors import AlarmError
from alarm.selection import (
    AspectStats,
    Pairs,
    aspect_stats,
    compute_stats,
    pair_up,
    pairs_from_samples,
    plot_selection,
    select_aspects,
    selection_markdown,
    selection_to_json,
)

# Seven pairs. H (holistic) = [+, 0, -, 0, -, -, +]; pair 5 has no aspect score (dropped).
# On the six kept pairs (0, 1, 2, 3, 4, 6): H = [+, 0, -, 0, -, +], M = [+, -, 0, -, -, -].
H_A = [5, 3, 2, 4, 1, 2, 7]
H_B = [1, 3, 4, 4, 2, 6, 0]
M_A = [0.9, 0.2, 0.5, 0.3, 0.4, None, 0.1]
M_B = [0.1, 0.8, 0.5, 0.7, 0.6, 0.3, 0.2]


def test_counts_and_rates_by_hand():
    s = aspect_stats(H_A, H_B, M_A, M_B)
    assert s.n_pairs == 6 and s.n_dropped == 1
    assert s.n_holistic_decisive == 4  # pairs 0, 2, 4, 6 (1 and 3 are holistic ties)
    assert s.n_both_decisive == 3  # pair 2 is an aspect tie
    assert s.n_conflicts == 1  # pair 6: H = +, M = -
    assert s.n_agreements == 2  # pairs 0 and 4
    assert s.n_aspect_ties == 1
    assert s.conflict == pytest.approx(1 / 4)
    assert s.agreement == pytest.approx(2 / 3)
    assert s.tie_rate == pytest.approx(1 / 6)
    assert s.decisive_rate == pytest.approx(5 / 6)


def test_correlations_pool_both_responses_of_kept_pairs():
    s = aspect_stats(H_A, H_B, M_A, M_B)
    kept = [0, 1, 2, 3, 4, 6]
    h = [H_A[i] for i in kept] + [H_B[i] for i in kept]
    m = [M_A[i] for i in kept] + [M_B[i] for i in kept]
    assert s.kendall_tau_b == pytest.approx(sps.kendalltau(m, h, variant="b").statistic)
    assert s.spearman_rho == pytest.approx(sps.spearmanr(m, h).statistic)


def test_lower_is_better_flips_the_aspect():
    s = aspect_stats(H_A, H_B, M_A, M_B, higher_is_better=False)
    # Flipped M = [-, +, 0, +, +, +]: pairs 0 and 4 now conflict, pair 6 agrees.
    assert (s.n_conflicts, s.n_agreements, s.n_both_decisive) == (2, 1, 3)
    assert s.conflict == pytest.approx(2 / 4)
    assert s.agreement == pytest.approx(1 / 3)
    assert s.tie_rate == pytest.approx(1 / 6)
    up = aspect_stats(H_A, H_B, M_A, M_B)
    assert s.kendall_tau_b == pytest.approx(-up.kendall_tau_b)
    assert s.spearman_rho == pytest.approx(-up.spearman_rho)
    assert s.higher_is_better is False


def test_nan_aspect_is_dropped_like_none():
    s = aspect_stats(H_A, H_B, [*M_A[:5], float("nan"), M_A[6]], M_B)
    assert s == aspect_stats(H_A, H_B, M_A, M_B)


def test_kendall_tau_b_with_ties_by_hand():
    # Single responses: h = [1, 2, 2, 3], m = [2, 1, 2, 3].
    # Of the 6 response pairs: (0,1) discordant, (0,2) tie in m only, (0,3) concordant,
    # (1,2) tie in h only, (1,3) concordant, (2,3) concordant -> C = 3, D = 1.
    # τ-b = (C - D) / sqrt((n0 - n_h_ties)(n0 - n_m_ties)) = 2 / sqrt(5 * 5) = 0.4.
    # Spearman on ranks h = [1, 2.5, 2.5, 4], m = [2.5, 1, 2.5, 4]: 2.25 / sqrt(4.5 * 4.5) = 0.5.
    s = aspect_stats([1, 2], [2, 3], [2, 1], [2, 3])
    assert s.kendall_tau_b == pytest.approx(0.4)
    assert s.spearman_rho == pytest.approx(0.5)
    # Pairs: H = [-, -], M = [0, -].
    assert (s.conflict, s.agreement, s.tie_rate) == (0.0, 1.0, 0.5)


def test_tie_tolerance_applies_to_both_signs():
    s = aspect_stats([1.0, 2.0], [1.05, 1.0], [0.5, 0.5], [0.45, 0.9], tie_tol=0.1)
    # H = [0, +] (|-0.05| ≤ 0.1), M = [0, -].
    assert (s.n_holistic_decisive, s.n_both_decisive, s.n_conflicts, s.n_aspect_ties) == (1, 1, 1, 1)
    assert (s.conflict, s.agreement, s.tie_rate) == (1.0, 0.0, 0.5)
    exact = aspect_stats([1.0, 2.0], [1.05, 1.0], [0.5, 0.5], [0.45, 0.9])
    assert (exact.n_holistic_decisive, exact.n_both_decisive) == (2, 2)


def test_all_aspect_ties_give_none_not_nan():
    s = aspect_stats([1, 2, 3], [0, 3, 3], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert s.conflict == 0.0  # ties never conflict: why the tie rate matters
    assert s.agreement is None
    assert s.tie_rate == 1.0
    assert s.kendall_tau_b is None and s.spearman_rho is None


def test_all_holistic_ties_leave_conflict_undefined():
    s = aspect_stats([1, 2], [1, 2], [0.1, 0.9], [0.5, 0.3])
    assert s.n_holistic_decisive == 0
    assert s.conflict is None and s.agreement is None
    assert s.tie_rate == 0.0


def test_all_pairs_dropped():
    s = aspect_stats([1, 2], [0, 3], [None, 0.4], [0.2, None])
    assert (s.n_pairs, s.n_dropped) == (0, 2)
    assert s.conflict is None and s.tie_rate is None and s.kendall_tau_b is None
    sel = select_aspects({"x": s}, max_conflict=0.5)
    assert sel.kept == [] and "undefined (no pairs)" in sel.reasons["x"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1, 2], [1], [1, 2], [1, 2]), "same length"),
        (([1, 2], [1, 2], [1], [1, 2]), "same length"),
        (([], [], [], []), "no pairs"),
        (([1, float("nan")], [1, 2], [1, 2], [1, 2]), "h_a[1]"),
        (([1, 2], [None, 2], [1, 2], [1, 2]), "h_b[0]"),
        (([1, 2], [1, 2], ["a", 2], [1, 2]), "m_a[0]"),
        (([1, 2], [1, 2], [1, float("inf")], [1, 2]), "infinite"),
    ],
)
def test_validation_errors_are_one_line(args, message):
    with pytest.raises(AlarmError, match=re.escape(message)) as err:
        aspect_stats(*args)
    assert "\n" not in str(err.value)


def test_negative_tie_tol_is_an_error():
    with pytest.raises(AlarmError, match="tie_tol"):
        aspect_stats([1], [2], [1], [2], tie_tol=-0.1)


def test_compute_stats_per_aspect_and_direction():
    out = compute_stats(Pairs(H_A, H_B, {"f": M_A, "g": M_A}, {"f": M_B, "g": M_B}), higher_is_better={"g": False})
    assert list(out) == ["f", "g"]
    assert out["f"].conflict == pytest.approx(0.25) and out["g"].conflict == pytest.approx(0.5)
    with pytest.raises(AlarmError, match="higher_is_better"):
        compute_stats(Pairs(H_A, H_B, {"f": M_A}, {"f": M_B}), higher_is_better={"typo": False})
    with pytest.raises(AlarmError, match="different aspects"):
        compute_stats(Pairs(H_A, H_B, {"f": M_A}, {"g": M_B}))


# ---------------------------------------------------------------------------------------------------------
# Selection


def _stats(conflict, tie_rate, n_pairs=100, agreement=0.7, tau=0.3):
    n_ties = round(tie_rate * n_pairs)
    n_hd = 80
    return AspectStats(
        conflict=conflict,
        agreement=agreement,
        tie_rate=tie_rate,
        kendall_tau_b=tau,
        spearman_rho=tau,
        n_pairs=n_pairs,
        n_dropped=0,
        n_holistic_decisive=n_hd,
        n_both_decisive=60,
        n_conflicts=0 if conflict is None else round(conflict * n_hd),
        n_agreements=42,
        n_aspect_ties=n_ties,
    )


STATS = {
    "relevance": _stats(0.40, 0.10),
    "factuality": _stats(0.20, 0.20),
    "completeness": _stats(0.30, 0.05),
    "brevity": _stats(0.05, 0.83),  # low conflict only because it almost always ties
}


def test_select_by_threshold():
    sel = select_aspects(STATS, max_conflict=0.35)
    assert sel.kept == ["brevity", "factuality", "completeness"]
    assert sel.dropped == ["relevance"]
    assert sel.order == ["brevity", "factuality", "completeness", "relevance"]
    assert sel.reasons["factuality"] == (
        "kept: conflict 0.20 ≤ 0.35 (16/80 holistic-decisive pairs), agreement 0.70, τ-b 0.30"
    )
    assert sel.reasons["relevance"].startswith(
        "dropped: conflict 0.40 > 0.35 (32/80 holistic-decisive pairs)"
    )


def test_threshold_is_inclusive():
    sel = select_aspects(STATS, max_conflict=0.30)
    assert "completeness" in sel.kept


def test_select_top_k_with_name_tie_break():
    stats = {**STATS, "aaa": _stats(0.20, 0.20)}
    sel = select_aspects(stats, top_k=2, min_decisive=0.5)
    assert sel.kept == ["aaa", "factuality"]  # equal conflict: by name
    assert sel.dropped == ["brevity", "completeness", "relevance"]
    assert "rank 3 of 4 (not in the top 2)" in sel.reasons["completeness"]
    assert sel.reasons["aaa"].startswith("kept: conflict 0.20, rank 1 of 4 (top 2)")


def test_min_decisive_guard_drops_tie_heavy_aspect():
    sel = select_aspects(STATS, max_conflict=0.35, min_decisive=0.5)
    assert "brevity" not in sel.kept
    assert sel.kept == ["factuality", "completeness"]
    assert sel.reasons["brevity"].startswith(
        "dropped: ties in 83% of pairs (83/100), decisive rate 0.17 < 0.50"
    )
    assert "conflict is 0.05" in sel.reasons["brevity"]
    top = select_aspects(STATS, top_k=1, min_decisive=0.5)
    assert top.kept == ["factuality"]


def test_undefined_conflict_is_dropped_and_said_so():
    stats = {"a": _stats(None, 0.1), "b": _stats(0.1, 0.1)}
    sel = select_aspects(stats, top_k=2)
    assert sel.kept == ["b"] and sel.order == ["b", "a"]
    assert "undefined (all ties)" in sel.reasons["a"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_conflict": 0.3, "top_k": 2},
        {"top_k": 0},
        {"max_conflict": 1.5},
        {"top_k": 1, "min_decisive": 2},
    ],
)
def test_selection_rule_errors(kwargs):
    with pytest.raises(AlarmError):
        select_aspects(STATS, **kwargs)


def test_selection_needs_both_or_neither_message():
    with pytest.raises(AlarmError, match="exactly one"):
        select_aspects(STATS)
    with pytest.raises(AlarmError, match="exactly one"):
        select_aspects(STATS, max_conflict=0.3, top_k=1)
    with pytest.raises(AlarmError, match="no aspects"):
        select_aspects({}, top_k=1)


# ---------------------------------------------------------------------------------------------------------
# Building pairs


def test_pair_up_aligns_by_prompt_id():
    a = {"q1": {"holistic": 1.0, "fact": 0.5}, "q2": {"holistic": 0.0, "fact": 0.1, "rel": 0.3}}
    b = {"q2": {"holistic": 2.0, "fact": 0.2}, "q1": {"holistic": 0.5, "fact": 0.7, "rel": 0.4}}
    h_a, h_b, m_a, m_b = pair_up(a, b)
    assert (h_a, h_b) == ([1.0, 0.0], [0.5, 2.0])
    assert m_a == {"fact": [0.5, 0.1], "rel": [None, 0.3]}
    assert m_b == {"fact": [0.7, 0.2], "rel": [0.4, None]}
    stats = compute_stats(Pairs(h_a, h_b, m_a, m_b))
    assert stats["rel"].n_dropped == 2


def test_pair_up_refuses_unmatched_prompts():
    a = {"q1": {"holistic": 1.0}, "q2": {"holistic": 1.0}, "q3": {"holistic": 1.0, "f": 1}}
    b = {"q1": {"holistic": 1.0, "f": 0}, "q9": {"holistic": 1.0}}
    with pytest.raises(AlarmError, match="2 prompt id\\(s\\) only in side a and 1 only in side b"):
        pair_up(a, b)
    with pytest.raises(AlarmError, match="holistic"):
        pair_up({"q": {"f": 1}}, {"q": {"holistic": 1, "f": 2}})
    with pytest.raises(AlarmError, match="appear in no scores"):
        pair_up({"q": {"holistic": 1, "f": 1}}, {"q": {"holistic": 1, "f": 2}}, aspects=["g"])


def test_pairs_from_samples_two_per_prompt():
    records = [
        {"prompt_id": 1, "response": "x", "holistic": 1.0, "fact": 0.2},
        {"prompt_id": 2, "response": "y", "holistic": 0.3, "fact": None},
        {"prompt_id": 1, "response": "z", "holistic": 2.0, "fact": 0.1},
        {"prompt_id": 2, "response": "w", "holistic": 0.1, "fact": 0.9},
    ]
    h_a, h_b, m_a, m_b = pairs_from_samples(records)
    assert (h_a, h_b) == ([1.0, 0.3], [2.0, 0.1])
    assert m_a == {"fact": [0.2, None]} and m_b == {"fact": [0.1, 0.9]}
    with pytest.raises(AlarmError, match="1 prompt\\(s\\) do not have exactly two samples"):
        pairs_from_samples(records[:3])


# ---------------------------------------------------------------------------------------------------------
# Reports


def test_markdown_lists_every_aspect_with_reason():
    stats = {**STATS, "empty": aspect_stats([1, 2], [1, 2], [0.5, 0.5], [0.5, 0.5])}
    sel = select_aspects(stats, max_conflict=0.35, min_decisive=0.5)
    md = selection_markdown(stats, sel)
    assert "| aspect | conflict | agreement | tie rate | τ-b | Spearman ρ | pairs | kept | reason |" in md
    for name in stats:
        assert f"| {name} |" in md
        assert sel.reasons[name] in md
    assert "undefined (all ties)" in md


def test_json_is_serialisable_and_complete():
    stats = {"a": aspect_stats(H_A, H_B, M_A, M_B), "t": aspect_stats([1], [2], [3], [3])}
    sel = select_aspects(stats, top_k=1)
    data = json.loads(json.dumps(selection_to_json(stats, sel), allow_nan=False))
    assert data["kept"] == ["t"] and data["dropped"] == ["a"]  # t: conflict 0 (tie), a: 0.25
    assert data["aspects"]["t"]["agreement"] is None
    assert data["aspects"]["a"]["n_dropped"] == 1
    assert data["aspects"]["a"]["reason"] == sel.reasons["a"]
    assert data["rule"] == {"max_conflict": None, "top_k": 1, "min_decisive": 0.0}


def test_plot_writes_png(tmp_path):
    sel = select_aspects(STATS, max_conflict=0.35, min_decisive=0.5)
    out = plot_selection(STATS, sel, tmp_path / "sub" / "selection.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------
# Property


score = st.integers(min_value=0, max_value=3)
pair = st.tuples(score, score, st.one_of(st.none(), score), st.one_of(st.none(), score))


@settings(max_examples=200, deadline=None)
@given(st.lists(pair, min_size=1, max_size=30))
def test_rates_partition_holistic_decisive_pairs_and_flip(pairs):
    h_a, h_b, m_a, m_b = (list(col) for col in zip(*pairs))
    s = aspect_stats(h_a, h_b, m_a, m_b)
    kept = [p for p in pairs if p[2] is not None and p[3] is not None]
    hd = [p for p in kept if p[0] != p[1]]
    assert s.n_pairs == len(kept) and s.n_dropped == len(pairs) - len(kept)
    assert s.n_holistic_decisive == len(hd)
    if hd:
        aspect_ties_in_hd = sum(p[2] == p[3] for p in hd)
        agreement_part = (
            0.0 if s.agreement is None else s.agreement * s.n_both_decisive / s.n_holistic_decisive
        )
        assert math.isclose(s.conflict + agreement_part + aspect_ties_in_hd / len(hd), 1.0)
    flipped = aspect_stats(h_a, h_b, m_a, m_b, higher_is_better=False)
    assert flipped.n_both_decisive == s.n_both_decisive
    assert flipped.n_conflicts == s.n_agreements and flipped.n_agreements == s.n_conflicts
    assert flipped.tie_rate == s.tie_rate
    if s.kendall_tau_b is not None:
        assert math.isclose(flipped.kendall_tau_b, -s.kendall_tau_b, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# The paper's protocol: greedy output vs pure sample, with each reward's greedy-vs-sampling win rate


def test_win_rates_by_hand():
    from alarm.selection import win_rates

    # H: greedy wins pairs 0, 6; loses 2, 4, 5; ties 1, 3 → 2 / 5. M (pair 5 dropped): wins 0; loses 1, 3, 4, 6.
    wins = win_rates(Pairs(H_A, H_B, {"m": M_A, "err": M_B}, {"m": M_B, "err": M_A}), higher_is_better={"err": False})
    assert list(wins) == ["holistic", "err", "m"]
    h = wins["holistic"]
    assert (h["wins"], h["losses"], h["ties"], h["win_rate_pct"]) == (2, 3, 2, 40.0)
    assert (wins["m"]["wins"], wins["m"]["losses"], wins["m"]["n_missing"]) == (1, 4, 1)
    assert wins["m"]["win_rate_pct"] == pytest.approx(20.0)
    assert wins["err"]["win_rate_pct"] == pytest.approx(20.0)  # err = M swapped and lower-is-better: same verdicts
    assert h["pct_low"] <= 40.0 <= h["pct_high"]


def test_report_and_figure_follow_the_papers_layout(tmp_path):
    from alarm.selection import selection_figure, win_rates

    m_a = {"factuality": [1, 1, 1, 0, 1], "length": [9, 1, 9, 9, 1]}
    m_b = {"factuality": [0, 0, 1, 1, 0], "length": [1, 9, 1, 1, 9]}
    h_a, h_b = [3, 3, 3, 1, 2], [1, 1, 2, 2, 3]  # greedy wins 3, loses 2: 60 %
    stats = compute_stats(Pairs(h_a, h_b, m_a, m_b))
    wins = win_rates(Pairs(h_a, h_b, m_a, m_b))
    sel = select_aspects(stats, max_conflict=0.4)
    md = selection_markdown(stats, sel, wins, ("greedy", "sample"))
    assert "| aspect | conflict | greedy-vs-sample win rate | agreement |" in md
    assert f"greedy-vs-sample win rate, the reference: {wins['holistic']['win_rate_pct']:.1f}" in md
    data = json.loads(json.dumps(selection_to_json(stats, sel, wins, ("greedy", "sample")), allow_nan=False))
    assert data["holistic_win_rate"]["win_rate_pct"] == 60.0 and data["sides"] == ["greedy", "sample"]
    assert data["aspects"]["length"]["win_rate"]["win_rate_pct"] == 60.0
    fig = selection_figure(stats, sel, wins, ("greedy", "sample"))
    ax = fig.axes[0]
    heights = [round(b.get_height(), 6) for b in ax.patches]
    order = sel.order
    assert heights == [round(100 * stats[n].conflict, 6) for n in order] + [wins[n]["win_rate_pct"] for n in order]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(60.0)  # the holistic reference line
    (legend,) = fig.legends
    assert "holistic win rate 60.0" in [t.get_text() for t in legend.get_texts()]
    assert plot_selection(stats, sel, tmp_path / "s.png", wins).read_bytes()[:4] == b"\x89PNG"
    # laid out (as saved): the legend sits outside the axes, so it covers no bar, and the title is not cut off
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    axes_box, legend_box = ax.get_window_extent(renderer), legend.get_window_extent(renderer)
    assert not axes_box.overlaps(legend_box)
    title_box, figure_box = ax.title.get_window_extent(renderer), fig.bbox
    assert figure_box.x0 <= title_box.x0 and title_box.x1 <= figure_box.x1 and title_box.y1 <= figure_box.y1
    long_rule = select_aspects(stats, max_conflict=0.4, min_decisive=0.25)  # the longest rule text
    fig = selection_figure(stats, long_rule, wins, ("greedy output of the initial policy", "pure sample"))
    fig.draw(fig.canvas.get_renderer())
    title_box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert fig.bbox.x0 <= title_box.x0 and title_box.x1 <= fig.bbox.x1 and title_box.y1 <= fig.bbox.y1


@pytest.fixture(scope="module")
def policy():
    import tiny

    return tiny.causal_lm(0), tiny.tokenizer()


def _recipe(tmp_path, *overrides):
    from alarm.config import load_recipe

    return load_recipe(None, [f"output_dir={tmp_path}", "rewards.holistic={type: length, unit: chars}",
                              "rewards.aspects={words: {type: length}, readability: {type: readability}}",
                              "rewards.normalize=[holistic]", "sample.prompts=6", "sample.max_new_tokens=12",
                              "selection.max_conflict=1.0", *overrides])


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_selection_step_pairs_greedy_with_a_pure_sample_by_default(tmp_path, policy):
    import torch

    from alarm.config import build_reward_set
    from alarm.data.prompts import prompt_records
    from alarm.generation import generate_texts
    from alarm.recipes.ppo import sample_and_fit, select_step
    from alarm.selection import win_rates

    model, tok = policy
    recipe = _recipe(tmp_path)
    assert recipe.selection.pairs == "greedy_vs_sample"
    records = prompt_records(recipe.data, tok, "train")[:6]
    rs = build_reward_set(recipe)
    torch.manual_seed(0)
    samples = sample_and_fit(recipe, model, tok, records, rs, tmp_path)
    rows = _rows(tmp_path / "selection_pairs.jsonl")
    greedy = {r["prompt_id"]: r for r in rows if r["side"] == "greedy"}
    sampled = {r["prompt_id"]: r for r in rows if r["side"] == "sample"}
    assert list(greedy) == list(sampled) == [r["id"] for r in records]
    expected = [t[0] for t in generate_texts(model, tok, [r["prompt"] for r in records], max_new_tokens=12)]
    assert [greedy[r["id"]]["completion"] for r in records] == expected
    first = {x["prompt_id"]: x for x in samples if x["sample"] == 0}  # PPO samples purely: sample 0 is reused
    assert all(sampled[p]["completion"] == first[p]["completion"] for p in sampled)
    assert all(greedy[p]["words"] == len(greedy[p]["completion"].split()) for p in greedy)

    kept = select_step(recipe, rs, samples, tmp_path)
    out = json.loads((tmp_path / "selection.json").read_text())
    assert out["pairs"] == "greedy_vs_sample" and out["n_pairs"] == 6 and set(kept) <= {"words", "readability"}
    ids = list(greedy)
    h_a, h_b = [greedy[p]["holistic"] for p in ids], [sampled[p]["holistic"] for p in ids]
    m_a = {k: [greedy[p][k] for p in ids] for k in ("words", "readability")}
    m_b = {k: [sampled[p][k] for p in ids] for k in ("words", "readability")}
    stats = compute_stats(Pairs(h_a, h_b, m_a, m_b))
    wins = win_rates(Pairs(h_a, h_b, m_a, m_b))
    assert out["holistic_win_rate"] == pytest.approx(wins["holistic"])
    for k in ("words", "readability"):
        assert out["aspects"][k]["conflict"] == stats[k].conflict
        assert out["aspects"][k]["win_rate"] == pytest.approx(wins[k])
    md = (tmp_path / "selection.md").read_text()
    assert "greedy output vs a pure sample" in md and "greedy-vs-sample win rate" in md


def test_selection_step_two_samples_stay_an_option_and_pure_samples_are_drawn_when_ppo_is_not(tmp_path, policy):
    from alarm.config import build_reward_set
    from alarm.data.prompts import prompt_records
    from alarm.recipes.ppo import sample_and_fit, select_step

    model, tok = policy
    recipe = _recipe(tmp_path / "two", "selection.pairs=two_samples")
    (tmp_path / "two").mkdir()
    records = prompt_records(recipe.data, tok, "train")[:6]
    rs = build_reward_set(recipe)
    samples = sample_and_fit(recipe, model, tok, records, rs, tmp_path / "two")
    assert not (tmp_path / "two" / "selection_pairs.jsonl").exists()
    select_step(recipe, rs, samples, tmp_path / "two")
    out = json.loads((tmp_path / "two" / "selection.json").read_text())
    expected = compute_stats(pairs_from_samples(samples, aspects=["words", "readability"]))
    assert out["pairs"] == "two_samples" and out["aspects"]["words"]["conflict"] == expected["words"].conflict

    recipe = _recipe(tmp_path / "hot", "ppo.temperature=0.7")
    (tmp_path / "hot").mkdir()
    samples = sample_and_fit(recipe, model, tok, records, rs, tmp_path / "hot")
    rows = _rows(tmp_path / "hot" / "selection_pairs.jsonl")
    assert [r["side"] for r in rows] == ["greedy"] * 6 + ["sample"] * 6  # a fresh pure sample, scored
    z = rs.normalizers["holistic"]  # fitted on this run's samples; the pairs are scored with it
    assert [r["holistic"] for r in rows] == pytest.approx([z(float(len(r["completion"]))) for r in rows])


def _scored_file(tmp_path, name, decoding, scores):
    """A scored file as `alarm generate` + `alarm score` write it, with both sidecars."""
    gen = tmp_path / f"{name}.jsonl"
    gen.write_text("")
    (tmp_path / f"{name}.jsonl.meta.json").write_text(json.dumps(decoding))
    out = tmp_path / f"{name}.scored.jsonl"
    out.write_text("".join(json.dumps({"prompt_id": str(i), "sample": 0, "prompt": "p", "completion": "c",
                                       "scores": s}) + "\n" for i, s in enumerate(scores)))
    (tmp_path / f"{name}.scored.jsonl.meta.json").write_text(json.dumps(
        {"source": str(gen), "metrics": {"holistic": {"higher_is_better": True}, "m": {"higher_is_better": True},
                                         "err": {"higher_is_better": False}}}))
    return str(out)


def test_select_command_defaults_to_greedy_vs_sample(tmp_path):
    import argparse

    from alarm.recipes.evaluation import add_commands

    def run(argv):
        parser = argparse.ArgumentParser()
        add_commands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        return args.handler(args)

    greedy = _scored_file(tmp_path, "greedy", {"do_sample": False}, [
        {"holistic": h, "m": m, "err": e} for h, m, e in zip(H_A, [0.9, 0.2, 0.5, 0.3, 0.4, None, 0.1], M_A[:5] + [1, 1])])
    sampled = _scored_file(tmp_path, "sampled", {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}, [
        {"holistic": h, "m": m, "err": e} for h, m, e in zip(H_B, M_B, M_B)])
    assert run(["select", greedy, sampled, "--out-dir", str(tmp_path / "o")]) == 0
    out = json.loads((tmp_path / "o" / "selection.json").read_text())
    assert out["pairs"] == "greedy-vs-sample" and out["sides"] == ["greedy", "sample"]
    h = out["holistic_win_rate"]
    assert (h["wins"], h["losses"], h["win_rate_pct"]) == (2, 3, 40.0)
    assert out["aspects"]["m"]["win_rate"]["win_rate_pct"] == pytest.approx(20.0)
    assert out["aspects"]["m"]["conflict"] == aspect_stats(H_A, H_B, M_A, M_B).conflict
    assert "greedy-vs-sample win rate" in (tmp_path / "o" / "selection.md").read_text()
    with pytest.raises(AlarmError, match="was sampled: greedy-vs-sample pairs take the greedy file first"):
        run(["select", sampled, greedy, "--out-dir", str(tmp_path / "x")])
    assert run(["select", sampled, greedy, "--pairs", "systems", "--out-dir", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "selection.json").read_text())["sides"] == ["sampled", "greedy"]
    with pytest.raises(AlarmError, match="takes two scored files, got 1"):
        run(["select", greedy, "--pairs", "greedy-vs-sample", "--out-dir", str(tmp_path / "y")])
