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
from alarm.select import (
    AspectStats,
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
    out = compute_stats(H_A, H_B, {"f": M_A, "g": M_A}, {"f": M_B, "g": M_B}, higher_is_better={"g": False})
    assert list(out) == ["f", "g"]
    assert out["f"].conflict == pytest.approx(0.25) and out["g"].conflict == pytest.approx(0.5)
    with pytest.raises(AlarmError, match="higher_is_better"):
        compute_stats(H_A, H_B, {"f": M_A}, {"f": M_B}, higher_is_better={"typo": False})
    with pytest.raises(AlarmError, match="different aspects"):
        compute_stats(H_A, H_B, {"f": M_A}, {"g": M_B})


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
    stats = compute_stats(h_a, h_b, m_a, m_b)
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
