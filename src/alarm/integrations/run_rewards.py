"""A served recipe's rewards, fitted: what `serve-reward`, the TRL reward objects and the verl adapter load
(a run directory's recipe, normalisers, ε and the aspects its selection kept, or a recipe + a state file)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

from alarm.combine import RewardSet, ScoredSequences
from alarm.errors import AlarmError

# ------------------------------------------------------------------------------- a served recipe's rewards


def read_state(path: str | Path) -> dict:
    """Normalisers and ε from a run's ``reward_state.json`` or a checkpoint's ``trainer_state.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / "trainer_state.json" if (p / "trainer_state.json").exists() else p / "reward_state.json"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise AlarmError(f"reward state {p} not found; give a run's reward_state.json or a checkpoint "
                         "directory") from None
    except (OSError, ValueError) as e:
        raise AlarmError(f"reward state {p} is not readable JSON ({e})") from None
    data = data.get("rewards", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or "normalizers" not in data or "epsilon" not in data:
        raise AlarmError(f"reward state {p} has no 'normalizers' and 'epsilon'; give the reward_state.json "
                         "that `alarm run`/`alarm train` wrote")
    return data


def fitted_reward_set(config: str | None = None, state: str | None = None, run: str | None = None,
                    overrides: Sequence[str] = ()) -> RewardSet:
    """A recipe's rewards, fitted: from ``run`` (its config.yaml, reward_state.json and the aspects its
    selection kept) and/or an explicit recipe and state file."""
    from alarm.config import build_reward_set, load_recipe

    run_dir = Path(run) if run else None
    if run_dir is not None and not run_dir.is_dir():
        raise AlarmError(f"run directory {run_dir} not found")
    if config is None and run_dir is None:
        raise AlarmError("give --config RECIPE or --run RUN_DIR")
    recipe = load_recipe(config if config is not None else run_dir / "config.yaml", list(overrides))
    aspects = None
    selection = run_dir / "selection.json" if run_dir is not None else None
    if selection is not None and selection.exists() and recipe.selection.apply:
        aspects = [k for k in json.loads(selection.read_text()).get("kept", []) if k in recipe.rewards.aspects]
    reward_set = build_reward_set(recipe, aspects=aspects)
    state_path = state or (run_dir / "reward_state.json" if run_dir is not None else None)
    if state_path is not None:
        data = read_state(state_path)
        norms = {k: v for k, v in data["normalizers"].items() if k in reward_set.names()}
        reward_set.load_state({"normalizers": norms, "epsilon": data["epsilon"]})
        if reward_set.config.epsilon_quantile is None:  # a z value in the recipe (or an override) wins;
            reward_set.epsilon = reward_set.config.epsilon  # a quantile was resolved on the initial policy
    reward_set.check_fitted()
    return reward_set


# ------------------------------------------------------------------- what leaves alarm towards an engine


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fallback_rows(n: int, fallback: float, aspects) -> ScoredSequences:
    return ScoredSequences(returns=[float(fallback)] * n, holistic_part=[float(fallback)] * n, aspect_part=[None] * n,
                           gate_open=[False] * n, holistic_z=[None] * n, aspects={k: [None] * n for k in aspects},
                           stats={})


def _join(parts: list[ScoredSequences]) -> ScoredSequences:
    first = next((p for p in parts if p.stats), parts[0])
    return ScoredSequences(
        returns=[x for p in parts for x in p.returns], holistic_part=[x for p in parts for x in p.holistic_part],
        aspect_part=[x for p in parts for x in p.aspect_part], gate_open=[x for p in parts for x in p.gate_open],
        holistic_z=[x for p in parts for x in p.holistic_z],
        aspects={k: [x for p in parts for x in p.aspects[k]] for k in first.aspects}, stats=first.stats)


def score_for_engine(reward_set: RewardSet, prompts: Sequence[str], completions: Sequence[str],
                     columns: dict | None = None, fallback: float | None = None, who: str = "alarm",
                     log=None) -> tuple[ScoredSequences, list[bool]]:
    """Score a batch for a trainer: every return a finite float, never ``None`` or NaN.

    Without ``fallback`` a response that cannot be scored is an :class:`AlarmError` naming it. With
    ``fallback`` a failing batch is scored response by response, and each response that still fails (or
    whose return is not finite) gets ``fallback``, logged with its index and the reason. Returns the scores
    and, per response, whether it got the fallback.
    """
    columns = columns or {}
    n = len(completions)
    log = log or (lambda msg: warnings.warn(msg, stacklevel=3))
    use_fallback = fallback is not None
    if use_fallback and not _finite(fallback):
        raise AlarmError(f"{who}: the fallback reward must be a finite number, got {fallback!r}")
    try:
        result = reward_set.score_sequences(list(prompts), list(completions), **columns)
    except AlarmError as e:
        if not use_fallback:
            raise
        if n == 1:
            log(f"{who}: a response cannot be scored ({str(e).splitlines()[0]}); it gets the fallback {fallback}")
            return _fallback_rows(1, fallback, reward_set.aspects), [True]
        parts, used = [], []
        for i in range(n):  # find the responses at fault; the others keep their rewards
            part, fb = score_for_engine(reward_set, [prompts[i]], [completions[i]],
                                        {k: [v[i]] for k, v in columns.items()}, fallback, f"{who} (response {i})",
                                        log)
            parts.append(part)
            used += fb
        return _join(parts), used
    bad = [i for i, r in enumerate(result.returns) if not _finite(r)]
    if bad and not use_fallback:
        raise AlarmError(f"{who}: response {bad[0]} has no finite reward ({result.returns[bad[0]]}); fix the reward, "
                         "or set a fallback reward for responses that cannot be scored")
    for i in bad:
        log(f"{who}: response {i} has no finite reward ({result.returns[i]}); it gets the fallback {fallback}")
        result.returns[i] = float(fallback)
    return result, [i in bad for i in range(n)]
