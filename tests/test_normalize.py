"""z-normalisation fitted on samples of the initial policy (alarm.rewards.normalize)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarm.errors import AlarmError
from alarm.rewards.normalize import Normalizer, load_normalizers, save_normalizers


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=40).filter(lambda xs: np.std(xs) > 1e-3))
def test_fit_then_apply_gives_mean_0_std_1(xs):
    n = Normalizer.fit(xs + [None])  # None (reward does not apply) is ignored
    assert n.count == len(xs)
    z = np.array([n(x) for x in xs])
    assert z.mean() == pytest.approx(0.0, abs=1e-9)
    assert z.std(ddof=1) == pytest.approx(1.0, rel=1e-9)
    assert n(None) is None


def test_fit_values_and_constant_input():
    n = Normalizer.fit([1.0, 2.0, 3.0, 4.0])
    assert (n.mean, n.count) == (2.5, 4)
    assert n.std == pytest.approx(math.sqrt(5 / 3))
    assert n(2.5) == 0.0


@pytest.mark.parametrize("values", [[7.0, 7.0, 7.0], [1e6, 1e6 + 1e-4, 1e6]])
def test_a_constant_reward_is_refused_by_name(values):
    # Before: std clamped to 1e-6, so every later difference became a z-score of ±1e6, silently.
    with pytest.raises(AlarmError, match="'grammar' is constant on the 3 fitting samples.*rewards.normalize"):
        Normalizer.fit(values, name="grammar")


@pytest.mark.parametrize("values", [[], [1.0], [None, 2.0, None]])
def test_too_few_values(values):
    with pytest.raises(AlarmError, match="at least 2"):
        Normalizer.fit(values)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values(bad):
    with pytest.raises(AlarmError, match="NaN or infinite"):
        Normalizer.fit([1.0, bad, 2.0])


def test_save_load_round_trip(tmp_path):
    norms = {"holistic": Normalizer.fit([0.5, 1.5, 4.0]), "length": Normalizer(10.0, 2.0, 5)}
    path = tmp_path / "run" / "sub" / "normalizers.json"  # parent directories are created
    save_normalizers(path, norms, epsilon=0.25, note="initial policy")
    loaded, extra = load_normalizers(path)
    assert loaded == norms
    assert extra == {"epsilon": 0.25, "note": "initial policy"}
    assert loaded["holistic"](4.0) == norms["holistic"](4.0)
    assert [p.name for p in path.parent.iterdir()] == ["normalizers.json"]  # no temp file left behind
    save_normalizers(path, {"x": Normalizer(0.0, 1.0, 2)})  # overwrite
    assert load_normalizers(path) == ({"x": Normalizer(0.0, 1.0, 2)}, {})


def test_missing_file(tmp_path):
    with pytest.raises(AlarmError, match="not found.*fit it first"):
        load_normalizers(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        "{}",
        json.dumps({"normalizers": {"h": {"mean": 0.0, "std": 1.0}}}),
        json.dumps({"normalizers": {"h": {"mean": "abc", "std": 1.0, "count": 3}}}),
        json.dumps({"normalizers": {"h": [0.0, 1.0, 3]}}),
        json.dumps({"normalizers": [1, 2]}),
        json.dumps({"normalizers": {"h": {"mean": 0.0, "std": 0.0, "count": 3}}}),
        json.dumps({"normalizers": {"h": {"mean": 0.0, "std": -1.0, "count": 3}}}),
        json.dumps({"normalizers": {"h": {"mean": float("nan"), "std": 1.0, "count": 3}}}),
    ],
)
def test_malformed_file(tmp_path, content):
    path = tmp_path / "normalizers.json"
    path.write_text(content)
    with pytest.raises(AlarmError, match="malformed.*fit again"):
        load_normalizers(path)


def test_a_constant_reward_cannot_be_fitted_through_the_reward_set():
    from alarm.combine import CombineConfig, RewardSet
    from alarm.errors import AlarmError

    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=lambda p, c, **k: [3.0] * len(c))
    with pytest.raises(AlarmError, match="'holistic' is constant on the 4 fitting samples"):
        rs.fit(["q"] * 4, ["a", "b", "c", "d"])
