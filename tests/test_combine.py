"""ALaRM's combination (DESIGN §2.2): the four modes, shaping, the hierarchy guarantee, RewardSet."""

from __future__ import annotations

import json
import math
import warnings
from itertools import accumulate

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarm.combine import (
    MODES,
    CombineConfig,
    HierarchyWarning,
    RewardSet,
    combine,
    hierarchy_warnings,
)
from alarm.errors import AlarmError
from alarm.rewards.base import Dense, FunctionReward, check_values, compute

SETTINGS = settings(max_examples=80, deadline=None)


# ----------------------------------------------------------------------------- an independent reference


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.float64(v)))


def token_of(ends, p):
    """First token whose end reaches p; position 0 → last token."""
    if p == 0:
        return len(ends) - 1
    return next(t for t, e in enumerate(ends) if e >= p)


def emitted_per_token(value, ends, f):
    """The aspect's values, shaped by ``f``, summed per token (brute force)."""
    out = np.zeros(len(ends))
    if value is None:
        return out
    if not isinstance(value, Dense):
        out[-1] += f(value)
        return out
    if value.spans or value.default is not None:
        for t in range(len(ends)):
            own = set(range(ends[t - 1] if t else 0, ends[t]))
            v = value.default
            for s, e, sv in value.spans:
                if own & set(range(s, e)):
                    v = sv
            if v is not None:
                out[t] += f(v)
    for p, v in value.points:
        out[token_of(ends, p)] += f(v)
    return out


def reference(config, ends_list, holistic, aspects, eps):
    """DESIGN §2.2 table, written out per mode."""
    result = []
    for i, ends in enumerate(ends_list):
        a = np.zeros(len(ends))
        for k, vals in aspects.items():
            f = sigmoid if (config.shape_aspects and k not in config.unshaped) else (lambda v: np.float64(v))
            a += config.aspect_weights.get(k, 1.0) * emitted_per_token(vals[i], ends, f)
        hol = np.zeros(len(ends))
        if holistic is not None:
            hol[-1] = config.holistic_weight * holistic[i]
        if config.mode == "holistic_only":
            r = hol
        elif config.mode == "aspect_only":
            r = a
        elif config.mode == "weighted_sum":
            r = a + hol
        else:
            r = hol if holistic[i] < eps else a + hol
        result.append(r)
    return result


# ----------------------------------------------------------------------------- strategies

small = st.floats(-6, 6, allow_nan=False)


@st.composite
def token_ends(draw):
    ends = list(accumulate(draw(st.lists(st.integers(0, 3), min_size=1, max_size=6))))
    if ends[-1] == 0:
        ends[-1] = 1  # a non-empty completion
    return ends


def aspect_value(draw, n_chars):
    kind = draw(st.sampled_from(["none", "float", "points", "spans"]))
    pos = st.integers(0, n_chars)
    if kind == "none":
        return None
    if kind == "float":
        return draw(small)
    if kind == "points":
        return Dense(points=tuple(draw(st.lists(st.tuples(pos, small), min_size=1, max_size=4))))
    spans = draw(st.lists(st.tuples(pos, pos, small).map(lambda x: (min(x[:2]), max(x[:2]), x[2])), max_size=3))
    return Dense(spans=tuple(spans), default=draw(st.none() | small), level="token")


@st.composite
def batches(draw, n_aspects=(0, 3)):
    ends_list = draw(st.lists(token_ends(), min_size=1, max_size=5))
    completions = ["x" * e[-1] for e in ends_list]
    names = [f"a{j}" for j in range(draw(st.integers(*n_aspects)))]
    aspects = {k: [aspect_value(draw, len(c)) for c in completions] for k in names}
    return completions, ends_list, aspects


# ----------------------------------------------------------------------------- (a) the four modes


@SETTINGS
@given(
    batch=batches(),
    mode=st.sampled_from(MODES),
    w_h=st.floats(-5, 5, allow_nan=False),
    eps=st.floats(-2, 2, allow_nan=False),
    data=st.data(),
)
def test_modes_match_the_design_table(batch, mode, w_h, eps, data):
    completions, ends_list, aspects = batch
    names = list(aspects)
    weights = {k: data.draw(st.floats(-3, 3, allow_nan=False)) for k in names if data.draw(st.booleans())}
    shape = data.draw(st.booleans())
    unshaped = tuple(k for k in names if data.draw(st.booleans()))
    config = CombineConfig(mode=mode, holistic_weight=w_h, epsilon=eps, aspect_weights=weights,
                           shape_aspects=shape, unshaped=unshaped)
    holistic = data.draw(st.lists(small, min_size=len(completions), max_size=len(completions)))
    h_arg = None if mode == "aspect_only" and data.draw(st.booleans()) else holistic

    got = combine(config, completions, ends_list, h_arg, aspects)
    expected = reference(config, ends_list, None if mode == "aspect_only" else holistic, aspects, eps)

    assert len(got.token_rewards) == len(completions)
    for i, (r, e) in enumerate(zip(got.token_rewards, expected)):
        assert r.shape == (len(ends_list[i]),)
        np.testing.assert_allclose(r.numpy(), e, rtol=1e-12, atol=1e-12, err_msg=f"response {i}")
        assert got.returns[i] == pytest.approx(float(e.sum()), abs=1e-9)
    gate = {
        "holistic_only": [False] * len(completions),
        "aspect_only": [True] * len(completions),
        "weighted_sum": [True] * len(completions),
        "hierarchical": [h >= eps for h in holistic],
    }[mode]
    assert got.gate_open == gate
    assert got.stats["gate_open_rate"] == pytest.approx(np.mean(gate))
    assert not any(got.empty)


def test_holistic_is_never_shaped_and_lands_on_last_token():
    config = CombineConfig(mode="weighted_sum", holistic_weight=2.0, shape_aspects=True)
    got = combine(config, ["abc"], [[1, 2, 3]], [-3.0], {})
    assert got.token_rewards[0].tolist() == [0.0, 0.0, -6.0]


# ----------------------------------------------------------------------------- (b) the hierarchy guarantee


@SETTINGS
@given(
    batch=batches(n_aspects=(0, 3)),
    w_h=st.floats(0.01, 10),
    eps=st.floats(-2, 2),
    data=st.data(),
)
def test_hierarchy_guarantee_with_shaped_aspects(batch, w_h, eps, data):
    completions, ends_list, aspects = batch
    # aspect values anywhere, even very negative: shaping keeps them ≥ 0
    aspects = {k: [v if not isinstance(v, float) else 5 * v for v in vals] for k, vals in aspects.items()}
    weights = {k: data.draw(st.floats(0, 5)) for k in aspects}
    n = len(completions)
    # h ≥ ε or clearly below it (1e-6 keeps w_h·h apart in floating point)
    above = st.floats(0, 5).map(lambda d: eps + d)
    below = st.floats(1e-6, 5).map(lambda d: eps - d)
    holistic = data.draw(st.lists(above | below, min_size=n, max_size=n))
    config = CombineConfig(mode="hierarchical", holistic_weight=w_h, epsilon=eps, aspect_weights=weights)
    assert hierarchy_warnings(config, list(aspects)) == []

    got = combine(config, completions, ends_list, holistic, aspects)
    open_r = [r for r, h in zip(got.returns, holistic) if h >= eps]
    closed_r = [r for r, h in zip(got.returns, holistic) if h < eps]
    for ro in open_r:
        for rc in closed_r:
            assert ro > rc
    assert got.stats["hierarchy/violated"] == 0.0


def test_guarantee_holds_at_h_equal_epsilon_with_a_tiny_shaped_aspect():
    config = CombineConfig(mode="hierarchical", holistic_weight=5.0, epsilon=0.6)
    got = combine(config, ["a", "b"], [[1], [1]], [0.6, 0.5999], {"tiny": [-30.0, 30.0]})
    assert got.gate_open == [True, False]
    assert got.returns[0] > got.returns[1]


# ----------------------------------------------------------------------------- (c) when it can fail: warnings


def seq_reward(values):
    it = {"v": values}
    return FunctionReward(lambda p, c, **k: list(it["v"][: len(c)]), name="seq")


def holistic_len():
    return FunctionReward(lambda p, c, **k: [float(len(x)) for x in c], name="h")


def test_unshaped_negative_aspect_breaks_the_guarantee_and_warns():
    config = CombineConfig(mode="hierarchical", holistic_weight=1.0, epsilon=0.0, unshaped=("grammar",))
    got = combine(config, ["good", "bad"], [[4], [3]], [0.1, -0.1], {"grammar": [-5.0, 0.0]})
    assert got.gate_open == [True, False]
    assert got.returns[0] < got.returns[1]  # the guarantee is broken
    assert got.stats["hierarchy/violated"] == 1.0

    with pytest.warns(HierarchyWarning, match="'grammar'.*not shaped"):
        RewardSet(config, holistic=holistic_len(), aspects={"grammar": seq_reward([0.0])})
    # declared non-negative: safe unshaped, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", HierarchyWarning)
        RewardSet(config, holistic=holistic_len(), aspects={"grammar": seq_reward([0.0])}, nonnegative=["grammar"])


def test_shape_aspects_off_warns_for_every_aspect():
    config = CombineConfig(mode="hierarchical", shape_aspects=False)
    with pytest.warns(HierarchyWarning) as record:
        RewardSet(config, holistic=holistic_len(), aspects={"x": seq_reward([0.0]), "y": seq_reward([0.0])})
    text = " ".join(str(w.message) for w in record)
    assert "'x'" in text and "'y'" in text


def test_negative_weight_and_nonpositive_holistic_weight_warn():
    with pytest.warns(HierarchyWarning, match="'fact'.*negative weight"):
        RewardSet(CombineConfig(aspect_weights={"fact": -0.5}), holistic=holistic_len(),
                  aspects={"fact": seq_reward([0.0])})
    for w_h in (0.0, -1.0):
        with pytest.warns(HierarchyWarning, match="holistic_weight"):
            RewardSet(CombineConfig(holistic_weight=w_h), holistic=holistic_len())


@pytest.mark.parametrize("mode", ["holistic_only", "aspect_only", "weighted_sum"])
def test_non_hierarchical_modes_do_not_warn(mode):
    config = CombineConfig(mode=mode, holistic_weight=-1.0, aspect_weights={"x": -2.0}, shape_aspects=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HierarchyWarning)
        RewardSet(config, holistic=holistic_len(), aspects={"x": seq_reward([0.0])})
    assert hierarchy_warnings(config, ["x"]) == []


# ----------------------------------------------------------------------------- empty responses


@pytest.mark.parametrize("mode", MODES)
def test_empty_response_penalty_lands_on_its_own_last_token(mode):
    config = CombineConfig(mode=mode, holistic_weight=2.0, epsilon=0.0, empty_penalty=-7.0)
    completions = ["hello", "  ", "world!"]
    ends = [[2, 5], [1, 2, 2], [3, 6, 6]]
    holistic = [1.0, None, -0.5]
    aspects = {"len": [Dense(points=((5, 1.0),)), Dense(points=((1, 9.0),)), 3.0]}
    got = combine(config, completions, ends, None if mode == "aspect_only" else holistic, aspects)

    assert got.empty == [False, True, False]
    assert got.token_rewards[1].tolist() == [0.0, 0.0, -7.0]
    assert got.returns[1] == -7.0
    assert got.gate_open[1] is False
    # the other responses are exactly what they would be without the empty one
    alone = combine(config, [completions[0], completions[2]], [ends[0], ends[2]],
                    None if mode == "aspect_only" else [holistic[0], holistic[2]],
                    {"len": [aspects["len"][0], aspects["len"][2]]})
    assert got.token_rewards[0].tolist() == alone.token_rewards[0].tolist()
    assert got.token_rewards[2].tolist() == alone.token_rewards[1].tolist()
    assert got.stats["empty_rate"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- stats


def test_stats_on_a_hand_made_batch():
    config = CombineConfig(mode="hierarchical", holistic_weight=1.0, epsilon=0.0)
    completions = ["ab", "", "abcd"]
    ends = [[1, 2], [0], [1, 3, 4]]
    got = combine(config, completions, ends, [1.0, None, -1.0], {"length": [2.0, None, 4.0]})
    s = got.stats
    assert s["rewards/length/mean"] == pytest.approx(3.0)
    assert s["rewards/holistic/mean"] == pytest.approx(0.0)
    assert s["gate_open_rate"] == pytest.approx(0.5)  # of the two non-empty responses, one passes the gate
    assert s["length/tokens"] == pytest.approx(2.0)
    assert s["length/chars"] == pytest.approx(2.0)
    assert s["empty_rate"] == pytest.approx(1 / 3)
    assert s["epsilon"] == 0.0
    assert s["hierarchy/violated"] == 0.0
    assert s["return/mean"] == pytest.approx((1.0 + sigmoid(2.0) + config.empty_return - 1.0) / 3)


# ----------------------------------------------------------------------------- RewardSet

COMPLETIONS = ["a", "abc", "hello there", "xy", "a much longer answer here", "mid size", "q", "four"]
PROMPTS = ["p"] * len(COMPLETIONS)


def count_e(prompts, completions, **kw):
    return [float(c.count("e")) for c in completions]


def make_set(**cfg):
    return RewardSet(CombineConfig(**cfg), holistic=holistic_len(),
                     aspects={"e": FunctionReward(count_e, name="e")}, normalize=("holistic", "e"))


def test_fit_normalises_holistic_to_mean_0_std_1():
    rs = make_set()
    raw = rs.fit(PROMPTS, COMPLETIONS)
    assert raw["holistic"] == [float(len(c)) for c in COMPLETIONS]
    z = np.array(rs.normalized(raw)["holistic"])
    assert z.mean() == pytest.approx(0.0, abs=1e-12)
    assert z.std(ddof=1) == pytest.approx(1.0)
    e = np.array(rs.normalized(raw)["e"])
    assert e.mean() == pytest.approx(0.0, abs=1e-12) and e.std(ddof=1) == pytest.approx(1.0)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.8])
def test_epsilon_quantile_is_the_quantile_of_z_scored_holistic(q):
    rs = make_set(epsilon_quantile=q)
    assert rs.epsilon is None
    rs.fit(PROMPTS, COMPLETIONS)
    lens = np.array([len(c) for c in COMPLETIONS], dtype=float)
    z = (lens - lens.mean()) / lens.std(ddof=1)
    assert rs.epsilon == pytest.approx(float(np.quantile(z, q)))
    combined, _ = rs.combine(PROMPTS, COMPLETIONS, [[len(c)] for c in COMPLETIONS])
    assert combined.stats["epsilon"] == pytest.approx(rs.epsilon)
    assert combined.gate_open == [bool(v >= rs.epsilon) for v in z]


def test_state_round_trip():
    rs = make_set(epsilon_quantile=0.3)
    rs.fit(PROMPTS, COMPLETIONS)
    state = json.loads(json.dumps(rs.state()))
    other = make_set(epsilon_quantile=0.3)
    other.load_state(state)
    assert other.epsilon == rs.epsilon
    assert other.normalizers == rs.normalizers
    batch = ["new one", "eeee", ""]
    ends = [[3, 7], [2, 4], [0]]
    a, _ = rs.combine(["p"] * 3, batch, ends)
    b, _ = other.combine(["p"] * 3, batch, ends)
    assert [t.tolist() for t in a.token_rewards] == [t.tolist() for t in b.token_rewards]


def test_not_fitted_raises():
    rs = make_set()
    with pytest.raises(AlarmError, match="not fitted.*RewardSet.fit"):
        rs.combine(PROMPTS, COMPLETIONS, [[len(c)] for c in COMPLETIONS])
    with pytest.raises(AlarmError, match="not fitted"):
        rs.sequence_rewards(PROMPTS, COMPLETIONS)
    with pytest.raises(AlarmError, match="epsilon"):  # nothing to normalise, but ε is still unresolved
        RewardSet(CombineConfig(epsilon_quantile=0.5), holistic=holistic_len(), normalize=()).combine(
            ["p"], ["x"], [[1]]
        )


def test_sequence_rewards_follow_the_return_formula():
    rs = make_set(holistic_weight=3.0, epsilon=0.0)
    rs.fit(PROMPTS, COMPLETIONS)
    batch = ["eee eee eee e", "e", "", "zz"]
    returns, stats = rs.sequence_rewards(["p"] * 4, batch)
    hn, en = rs.normalizers["holistic"], rs.normalizers["e"]
    for c, r in zip(batch, returns):
        if not c.strip():
            assert r == rs.config.empty_return
            continue
        h = hn(len(c))
        expected = 3.0 * h + (sigmoid(en(c.count("e"))) if h >= 0.0 else 0.0)
        assert r == pytest.approx(float(expected))
    assert stats["empty_rate"] == 0.25


# ----------------------------------------------------------------------------- errors


def test_config_errors():
    with pytest.raises(AlarmError, match="mode 'gated'.*hierarchical"):
        CombineConfig(mode="gated")
    for q in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(AlarmError, match="epsilon_quantile"):
            CombineConfig(epsilon_quantile=q)
    with pytest.raises(AlarmError, match="'fact'.*finite"):
        CombineConfig(aspect_weights={"fact": math.nan})
    with pytest.raises(AlarmError, match="holistic_weight"):
        CombineConfig(holistic_weight=math.inf)
    with pytest.raises(AlarmError, match="needs a holistic reward"):
        RewardSet(CombineConfig(mode="hierarchical"))
    with pytest.raises(AlarmError, match="unknown rewards"):
        RewardSet(CombineConfig(), holistic=holistic_len(), normalize=("holistic", "nope"))


def test_holistic_none_on_non_empty_response():
    with pytest.raises(AlarmError, match="holistic reward returned None for completion 1"):
        combine(CombineConfig(), ["a", "b"], [[1], [1]], [0.0, None], {})


def test_combine_shape_errors():
    with pytest.raises(AlarmError, match="aspect 'x' has 1 values for 2"):
        combine(CombineConfig(), ["a", "b"], [[1], [1]], [0.0, 1.0], {"x": [1.0]})
    with pytest.raises(AlarmError, match="no generated tokens"):
        combine(CombineConfig(), ["a"], [[]], [0.0], {})
    with pytest.raises(AlarmError, match="one holistic reward per completion"):
        combine(CombineConfig(), ["a", "b"], [[1], [1]], [0.0], {})


def test_bad_reward_outputs_are_caught_with_the_reward_name():
    wrong_len = FunctionReward(lambda p, c, **k: [1.0], name="short")
    with pytest.raises(AlarmError, match="'short' returned 1 values for 3 completions"):
        compute(wrong_len, ["p"] * 3, ["a", "b", "c"])
    nan = FunctionReward(lambda p, c, **k: [1.0, math.nan], name="nanny")
    with pytest.raises(AlarmError, match="'nanny' returned nan for completion 1"):
        compute(nan, ["p", "p"], ["a", "b"])
    with pytest.raises(AlarmError, match="non-finite"):
        check_values("dense", [Dense(points=((1, math.inf),))], 1)
    with pytest.raises(AlarmError, match="expected a float, Dense or None"):
        check_values("obj", ["high"], 1)
    with pytest.raises(AlarmError, match="must return a list"):
        check_values("gen", 1.0, 1)
    # and through a RewardSet
    rs = RewardSet(CombineConfig(), holistic=nan)
    with pytest.raises(AlarmError, match="'nanny'"):
        rs.fit(["p", "p"], ["a", "b"])


def test_prompt_cuts_of_reward_models_reach_the_step_metrics():
    class CuttingReward:  # like SequenceClassifierReward with a template: it had to shorten 1 of 4 prompts
        def __call__(self, prompts, completions, **columns):
            self.last_stats = {"prompts_cut": 1, "inputs": len(completions)}
            return [float(len(c)) for c in completions]

    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=CuttingReward())
    rs.fit(PROMPTS, COMPLETIONS)
    combined, _ = rs.combine(["p"] * 4, ["a", "bb", "ccc", "dddd"], [[1], [2], [3], [4]])
    assert combined.stats["rewards/holistic/prompt_cut_rate"] == 0.25


# ---------------------------------------------------------------- empty penalty, ε checks, shaping scale


def _e_rate(prompts, completions, **kw):
    return [c.count("e") / (1 + len(c)) for c in completions]


# --------------------------------------------------------------------------------- 2. empty responses


def test_default_empty_penalty_is_below_every_real_answer():
    import warnings

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from alarm.combine import HierarchyWarning, combine

    @settings(max_examples=60, deadline=None)
    @given(w_h=st.floats(0.1, 10.0), h=st.floats(-9.99, 10.0), mode=st.sampled_from(
        ["hierarchical", "holistic_only", "weighted_sum"]), a=st.floats(-20, 20))
    def check(w_h, h, mode, a):
        config = CombineConfig(mode=mode, holistic_weight=w_h, epsilon=0.6)
        out = combine(config, ["a real answer", ""], [[2, 6, 13], [0]], [h, None], {"fact": [a, None]})
        assert out.returns[1] < out.returns[0]
        assert out.returns[1] == config.empty_return

    check()
    assert CombineConfig(holistic_weight=5.0).empty_return == -50.0  # the paper: QA −50, MT −30
    assert CombineConfig(holistic_weight=3.0).empty_return == -30.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", HierarchyWarning)
        RewardSet(CombineConfig(), holistic=_e_rate)  # the default configuration warns about nothing


def test_a_penalty_inside_the_return_range_is_named_in_the_warnings():
    from alarm.combine import HierarchyWarning

    with pytest.warns(HierarchyWarning, match=r"empty_penalty -5 is above the return of a real answer with h < -1\.00"):
        rs = RewardSet(CombineConfig(mode="holistic_only", empty_penalty=-5.0), holistic=_e_rate)
    completions = ["eeee", "eee", "eeeee", "ee", "eeeeee", "xyz"]  # "xyz" lies ~2 std below the rest
    with pytest.warns(HierarchyWarning, match=r"above the holistic return w_h·h of \d+ of 6 initial-policy answers"):
        rs.fit(["q"] * 6, completions)


# ------------------------------------------------------------------------------------- 6. normalisers


def test_epsilon_on_an_unnormalised_holistic_reward_warns():
    from alarm.combine import HierarchyWarning

    with pytest.warns(HierarchyWarning, match="epsilon 0.6 is a z value but the holistic reward is not normalised"):
        RewardSet(CombineConfig(mode="hierarchical"), holistic=_e_rate, normalize=())


def test_combine_called_directly_with_a_quantile_needs_epsilon():
    from alarm.combine import combine, resolve_epsilon
    from alarm.errors import AlarmError

    config = CombineConfig(mode="hierarchical", epsilon_quantile=0.9)
    with pytest.raises(AlarmError, match="epsilon_quantile needs the initial policy's holistic scores"):
        combine(config, ["ab"], [[1, 2]], [0.7], {})
    eps = resolve_epsilon(config, [0.0, 1.0, 2.0])
    assert combine(config, ["ab"], [[1, 2]], [0.7], {"a": [1.0]}, epsilon=eps).gate_open == [False]


# ------------------------------------------------------------------------ 8. the paper's settings


def test_aspect_scale_shapes_inside_the_logistic():
    from alarm.combine import combine, logistic

    config = CombineConfig(mode="weighted_sum", holistic_weight=1.0, aspect_scales={"completeness": 0.3})
    out = combine(config, ["ab"], [[1, 2]], [0.0], {"completeness": [2.0], "fact": [2.0]})
    assert float(out.token_rewards[0][-1]) == pytest.approx(logistic(0.6) + logistic(2.0))
    from alarm.errors import AlarmError

    with pytest.raises(AlarmError, match="aspect_scales.completeness must be > 0"):
        CombineConfig(aspect_scales={"completeness": 0.0})


def test_the_docs_state_the_empty_return_and_the_group_baseline_the_code_uses():
    """The default empty return is −10·max(w_h, 1) (not w_h·(−10): w_h 0.5 would give −5); the group baseline
    averages the siblings' scores, without their −β·KL."""
    from pathlib import Path

    assert CombineConfig(holistic_weight=0.5).empty_return == -10.0
    assert CombineConfig(holistic_weight=5.0).empty_return == -50.0
    root = Path(__file__).resolve().parents[1]
    for page in ("docs/concepts.md", "docs/method.md"):  # the README keeps only the concepts in brief
        text = " ".join((root / page).read_text(encoding="utf-8").split())
        assert "w_h·(−10)" not in text and "−10·max(w_h, 1)" in text, page
        assert "without the −β·KL term" in text, page
