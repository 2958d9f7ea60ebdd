"""A served recipe's rewards, fitted: what `serve-reward`, the TRL reward objects and the verl adapter load
(a run directory's recipe, normalisers, ε and the aspects its selection kept, or a recipe + a state file)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from alarm.combine import RewardSet
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
