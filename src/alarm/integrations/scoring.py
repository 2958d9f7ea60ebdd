"""One scoring pass shared by the integrations: the combined return of each response and its parts.

TRL, the reward server and the verl adapter all need more than :meth:`RewardSet.sequence_rewards` gives: the
per-response holistic z, whether the gate opened, each aspect's value, and the return split into its
holistic part w_h·h and its gated aspect part Σ_k w_k·s(r_k) (``None`` when the gate is closed). The return
itself still comes from :func:`alarm.combine.combine`, the one place where rewards combine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alarm.combine import RewardSet, combine
from alarm.errors import AlarmError
from alarm.rewards.base import Dense, summarize


@dataclass
class Scored:
    """A batch scored and combined. Lists have one entry per response."""

    returns: list[float]  # R = w_h·h + 1[h ≥ ε]·Σ_k w_k·s(r_k); an empty response gets the empty penalty
    holistic_part: list[float]  # w_h·h (the empty penalty for an empty response; 0 in aspect_only)
    aspect_part: list[float | None]  # R − holistic part when the gate is open, None when it is closed
    gate_open: list[bool]
    holistic_z: list[float | None]
    aspects: dict[str, list[float | None]]  # each aspect's (normalised) value, one number per response
    stats: dict[str, float]  # combine()'s batch statistics: gate_open_rate, rewards/<name>/mean, ...

    def per_sample(self) -> dict[str, list]:
        """Per-response columns, JSON-ready (for OpenRLHF's extra_logs and TRL's completions table)."""
        out = {"return": self.returns, "gate_open": [float(g) for g in self.gate_open],
               "holistic_part": self.holistic_part, "aspect_part": self.aspect_part}
        if any(h is not None for h in self.holistic_z):
            out["holistic_z"] = self.holistic_z
        out.update({f"aspect/{k}": v for k, v in self.aspects.items()})
        return out


def check_fitted(reward_set: RewardSet) -> None:
    """Refuse to combine before the normalisers and ε exist (they come from the initial policy's samples)."""
    missing = [k for k in reward_set.normalize if k in reward_set.names() and k not in reward_set.normalizers]
    if missing or reward_set.epsilon is None:
        raise AlarmError(
            f"rewards {missing or ['epsilon']} are not fitted; load the run's reward_state.json "
            "(--state / --run, or RewardSet.load_state) or call RewardSet.fit on initial-policy samples")


def score(reward_set: RewardSet, prompts: Sequence[str], completions: Sequence[str], **columns) -> Scored:
    """Score a batch with every reward once and combine it (sequence level: one pseudo-token per response)."""
    check_fitted(reward_set)
    cfg = reward_set.config
    raw = reward_set.raw_scores(prompts, completions, **columns)
    norm = reward_set.normalized(raw)
    for k in reward_set.aspects:
        if any(isinstance(v, Dense) and (v.spans or v.default is not None) for v in norm[k]):
            raise AlarmError(f"aspect {k!r} is token-level; a sequence-level trainer cannot place it on tokens "
                             "(use `alarm train`, or a sentence-level aspect)")
    one_token = [[len(c)] for c in completions]  # every emitted value lands on one pseudo-token
    holistic = norm.get(RewardSet.HOLISTIC)
    result = combine(cfg, completions, one_token, holistic, {k: norm[k] for k in reward_set.aspects},
                     epsilon=reward_set.epsilon)
    result.stats.pop("length/tokens", None)  # one pseudo-token per response: not a token count
    h_part = []
    for i in range(len(completions)):
        if result.empty[i]:
            h_part.append(float(cfg.empty_return))
        elif holistic is not None and cfg.mode != "aspect_only":
            h_part.append(cfg.holistic_weight * float(holistic[i]))
        else:
            h_part.append(0.0)
    a_part = [r - h if g else None for r, h, g in zip(result.returns, h_part, result.gate_open)]
    return Scored(
        returns=list(result.returns), holistic_part=h_part, aspect_part=a_part, gate_open=list(result.gate_open),
        holistic_z=list(holistic) if holistic is not None else [None] * len(completions),
        aspects={k: [summarize(v) for v in norm[k]] for k in reward_set.aspects},
        stats=dict(result.stats))


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


def load_reward_set(config: str | None = None, state: str | None = None, run: str | None = None,
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
    check_fitted(reward_set)
    return reward_set
