"""ALaRM's reward combination: the one place where holistic and aspect rewards become token rewards.

docs/method.md §2.2. For a response with z-normalised holistic reward h and aspect values r_k (each shaped by the
logistic s), the aspect vector is a_t = Σ_k w_k·s(r_{k,t}) and the token reward vector is

| mode           | r_t                                                      |
|----------------|----------------------------------------------------------|
| holistic_only  | w_h·h on the last token                                  |
| aspect_only    | a_t                                                      |
| weighted_sum   | a_t + w_h·h on the last token                            |
| hierarchical   | holistic_only if h < ε, weighted_sum if h ≥ ε            |

so the return is R = w_h·h + 1[h ≥ ε]·Σ_t a_t. With shaped (positive) aspect values and w_h > 0, every
response with h ≥ ε out-earns every response with h < ε — the hierarchy guarantee; :func:`hierarchy_warnings`
names each setting that breaks it. An empty response gets ``empty_penalty`` on its own last token instead
(default −10·max(w_h, 1), the paper's h = −10: below every real answer, so PPO is never paid to abstain).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from alarm.errors import AlarmError
from alarm.placement import place
from alarm.rewards.base import Dense, compute, is_dense, reward_name, summarize
from alarm.rewards.normalize import Normalizer

MODES = ("holistic_only", "aspect_only", "weighted_sum", "hierarchical")


class HierarchyWarning(UserWarning):
    """The configuration can break the hierarchy guarantee."""


def logistic(v: float) -> float:
    """s(v) = 1 / (1 + e^(−v)), computed without overflow."""
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@dataclass
class CombineConfig:
    """How rewards combine. Defaults are the paper's QA setting (w_h 5, ε 0.6); MT used w_h 3, ε 0.5."""

    mode: Annotated[str, Field(description=(
        "holistic_only, aspect_only, weighted_sum, or hierarchical (ALaRM: the aspects count only when h ≥ ε)"))
    ] = "hierarchical"
    holistic_weight: Annotated[float, Field(description="w_h, the holistic reward's weight (the paper: QA 5, "
                                            "MT 3)")] = 5.0
    epsilon: Annotated[float, Field(description="the gate ε, compared with the z-scored holistic reward (the "
                                    "paper: QA 0.6, MT 0.5)")] = 0.6
    epsilon_quantile: Annotated[float | None, Field(description=(
        "if set, ε is this quantile of h under the initial policy instead of epsilon"))] = None
    aspect_weights: Annotated[dict[str, float], Field(description=(
        "w_k per aspect name; an aspect not listed weighs 1"))] = field(default_factory=dict)
    aspect_scales: Annotated[dict[str, float], Field(description=(
        "shape the listed aspects as s(scale·v) instead of s(v) (the paper shaped completeness as s(0.3·z))"))
    ] = field(default_factory=dict)
    shape_aspects: Annotated[bool, Field(description=(
        "pass every aspect value through the logistic s (never h); false can break the hierarchy guarantee"))
    ] = True
    unshaped: Annotated[tuple[str, ...], Field(description=(
        "aspects exempted from shaping (negative values can break the hierarchy guarantee)"))] = ()
    # On the response's last token; a value inside the normal return range pays PPO to abstain.
    empty_penalty: Annotated[float | None, Field(description=(
        "the return of an empty response (null: −10·max(w_h, 1), the paper's h = −10: below every real answer)"))
    ] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise AlarmError(f"combine mode {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        if self.epsilon_quantile is not None and not 0.0 < self.epsilon_quantile < 1.0:
            raise AlarmError(f"epsilon_quantile must lie in (0, 1), got {self.epsilon_quantile}")
        for key, v in [("holistic_weight", self.holistic_weight), ("epsilon", self.epsilon),
                       ("empty_penalty", self.empty_return), *self.aspect_weights.items(),
                       *self.aspect_scales.items()]:
            if not math.isfinite(float(v)):
                raise AlarmError(f"combine setting {key!r} must be a finite number, got {v}")
        for key, v in self.aspect_scales.items():
            if v <= 0:
                raise AlarmError(f"aspect_scales.{key} must be > 0 (it multiplies the value inside s(·)), got {v}")
        self.unshaped = tuple(self.unshaped)

    @property
    def empty_return(self) -> float:
        """The return of an empty response: ``empty_penalty``, or −10·max(w_h, 1) when it is not set."""
        if self.empty_penalty is not None:
            return float(self.empty_penalty)
        return -10.0 * max(float(self.holistic_weight), 1.0)

    def weight(self, aspect: str) -> float:
        return float(self.aspect_weights.get(aspect, 1.0))

    def shaped(self, aspect: str) -> bool:
        return self.shape_aspects and aspect not in self.unshaped

    def shaping(self, aspect: str):
        """The function applied to each value ``aspect`` emits: s(scale·v), or None when unshaped."""
        if not self.shaped(aspect):
            return None
        scale = float(self.aspect_scales.get(aspect, 1.0))
        return logistic if scale == 1.0 else (lambda v: logistic(scale * v))


def resolve_epsilon(config: CombineConfig, holistic_z: Sequence[float | None]) -> float:
    """ε as a z value: the configured one, or the configured quantile of h under the initial policy."""
    if config.epsilon_quantile is None:
        return config.epsilon
    xs = [float(v) for v in holistic_z if v is not None]
    if not xs:
        raise AlarmError("cannot resolve epsilon_quantile: no holistic scores of the initial policy")
    return float(np.quantile(xs, config.epsilon_quantile))


def hierarchy_warnings(config: CombineConfig, aspects: Sequence[str], nonnegative: Sequence[str] = ()) -> list[str]:
    """Reasons why the hierarchy guarantee can fail under ``config`` (empty list: it holds), and why an
    empty response can out-earn a real one (in every mode with a holistic reward).

    ``nonnegative`` names aspects known never to emit negative values (they are safe unshaped).
    """
    reasons = []
    floor = -10.0 * max(config.holistic_weight, 1.0)
    if config.mode != "aspect_only" and config.empty_return > floor:
        reasons.append(
            f"empty_penalty {config.empty_return:g} is above the return of a real answer with "
            f"h < {config.empty_return / max(config.holistic_weight, 1e-12):.2f} (w_h·h with w_h = "
            f"{config.holistic_weight:g}): PPO is paid to answer nothing on hard prompts; leave it unset "
            f"(−10·max(w_h, 1) = {floor:g}) or set it ≤ {floor:g}"
        )
    if config.mode != "hierarchical":
        return reasons
    if config.holistic_weight <= 0:
        reasons.append(f"holistic_weight is {config.holistic_weight}; it must be > 0 for the gate to rank by h")
    for a in aspects:
        if config.weight(a) < 0:
            reasons.append(f"aspect {a!r} has negative weight {config.weight(a)}: it can pull gated responses down")
        elif not config.shaped(a) and a not in nonnegative:
            reasons.append(
                f"aspect {a!r} is not shaped, so its negative values can pull a response with h ≥ ε below one "
                "with h < ε; enable shape_aspects or remove it from `unshaped`"
            )
    return reasons


@dataclass
class Combined:
    """Output of :func:`combine`: one token reward vector per response, plus what to log."""

    token_rewards: list[torch.Tensor]
    returns: list[float]
    gate_open: list[bool]
    empty: list[bool]
    stats: dict[str, float]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def combine(
    config: CombineConfig,
    completions: Sequence[str],
    token_ends: Sequence[Sequence[int]],
    holistic: Sequence[float | None] | None,
    aspects: dict[str, Sequence[float | Dense | None]],
    epsilon: float | None = None,
) -> Combined:
    """Token reward vectors for a batch.

    ``token_ends[i]`` are the character ends of the generated tokens of response i
    (:func:`alarm.placement.token_char_ends`); ``holistic`` is already z-normalised; ``aspects`` maps each
    aspect name to its values (floats land on the last token, :class:`Dense` values at their positions).
    """
    n = len(completions)
    if len(token_ends) != n:
        raise AlarmError(f"combine: {len(token_ends)} token offset lists for {n} completions")
    needs_h = config.mode != "aspect_only"
    if needs_h and (holistic is None or len(holistic) != n):
        raise AlarmError(f"combine mode {config.mode!r} needs one holistic reward per completion")
    for k, vals in aspects.items():
        if len(vals) != n:
            raise AlarmError(f"combine: aspect {k!r} has {len(vals)} values for {n} completions")
    if epsilon is None and config.epsilon_quantile is not None and config.mode == "hierarchical":
        raise AlarmError("combine: epsilon_quantile needs the initial policy's holistic scores; pass "
                         "epsilon=resolve_epsilon(config, h_initial) or use RewardSet.fit")
    eps = config.epsilon if epsilon is None else epsilon
    w_h = config.holistic_weight

    token_rewards, returns, gates, empties = [], [], [], []
    aspect_sums = {k: [] for k in aspects}
    for i in range(n):
        ends = token_ends[i]
        if len(ends) == 0:
            raise AlarmError(f"completion {i} has no generated tokens; rewards need at least one token to land on")
        r = torch.zeros(len(ends), dtype=torch.float64)
        empty = completions[i].strip() == ""
        h = holistic[i] if needs_h else None
        if needs_h and h is None and not empty:
            raise AlarmError(f"the holistic reward returned None for completion {i}; it must score every response")
        if empty:
            r[-1] = config.empty_return
            gate = False
        else:
            gate = config.mode in ("aspect_only", "weighted_sum") or (config.mode == "hierarchical" and h >= eps)
            if needs_h:
                r[-1] += w_h * float(h)
            for k, vals in aspects.items():
                a_k = config.weight(k) * place(vals[i], ends, shape=config.shaping(k))
                aspect_sums[k].append(float(a_k.sum()))
                if gate:
                    r += a_k
        token_rewards.append(r)
        returns.append(float(r.sum()))
        gates.append(gate)
        empties.append(empty)

    kept = [i for i in range(n) if not empties[i]]
    stats: dict[str, float] = {
        "return/mean": _mean(returns),
        "gate_open_rate": _mean([float(gates[i]) for i in kept]),
        "empty_rate": _mean([float(e) for e in empties]),
        "length/tokens": _mean([len(e) for e in token_ends]),
        "length/chars": _mean([len(c) for c in completions]),
        "epsilon": float(eps),
    }
    if needs_h:
        stats["rewards/holistic/mean"] = _mean([float(holistic[i]) for i in kept])
    for k, vals in aspects.items():
        emitted = [x for v in vals if v is not None for x in (v.values() if isinstance(v, Dense) else [float(v)])]
        stats[f"rewards/{k}/mean"] = _mean(emitted)
        stats[f"rewards/{k}/weighted_shaped_sum"] = _mean(aspect_sums[k])
    if config.mode == "hierarchical":  # always present (0 for an all-empty batch): the key set never varies
        open_r = [returns[i] for i in kept if gates[i]]
        closed_r = [returns[i] for i in kept if not gates[i]]
        stats["hierarchy/violated"] = float(bool(open_r and closed_r and min(open_r) <= max(closed_r)))
    return Combined(token_rewards, returns, gates, empties, stats)


def over_nonempty(key: str) -> bool:
    """Whether :func:`combine`'s statistic ``key`` averages over the non-empty responses only (the others
    average over every response): what a mean over several processes must weight it by."""
    return key in ("gate_open_rate", "rewards/holistic/mean", "hierarchy/violated") or key.endswith(
        "/weighted_shaped_sum")


class RewardSet:
    """The rewards of a run — a holistic reward, named aspect rewards, their normalisers — and how they combine.

    ``normalize`` names the rewards to z-normalise (the holistic one by default; sequence-level aspects may be
    added). Call :meth:`fit` on samples of the initial policy before training, and keep :meth:`state` with the
    run.
    """

    HOLISTIC = "holistic"

    def __init__(self, config: CombineConfig, holistic: Any = None, aspects: dict[str, Any] | None = None,
                 normalize: Sequence[str] = ("holistic",), nonnegative: Sequence[str] = ()):
        self.config = config
        self.holistic = holistic
        self.aspects = dict(aspects or {})
        if config.mode != "aspect_only" and holistic is None:
            raise AlarmError(f"combine mode {config.mode!r} needs a holistic reward; configure one or use aspect_only")
        if config.mode in ("aspect_only",) and not self.aspects:
            raise AlarmError("combine mode 'aspect_only' needs at least one aspect reward")
        unknown = set(normalize) - {self.HOLISTIC, *self.aspects}
        if unknown:
            raise AlarmError(f"cannot normalise unknown rewards {sorted(unknown)}; known: holistic, {sorted(self.aspects)}")
        for k in normalize:
            if k != self.HOLISTIC and is_dense(self.aspects[k]):
                raise AlarmError(f"aspect {k!r} is dense; only sequence-level rewards can be z-normalised")
        self.normalize = tuple(normalize)
        self.normalizers: dict[str, Normalizer] = {}
        self.epsilon = config.epsilon if config.epsilon_quantile is None else None
        for reason in hierarchy_warnings(config, list(self.aspects), nonnegative):
            warnings.warn(f"hierarchy guarantee can fail: {reason}", HierarchyWarning, stacklevel=2)
        if config.mode == "hierarchical" and config.epsilon_quantile is None and self.HOLISTIC not in self.normalize:
            warnings.warn(
                f"epsilon {config.epsilon:g} is a z value but the holistic reward is not normalised, so the gate "
                "compares it with raw scores; add 'holistic' to normalize or give epsilon_quantile instead",
                HierarchyWarning, stacklevel=2)

    def names(self) -> list[str]:
        return ([self.HOLISTIC] if self.holistic is not None else []) + list(self.aspects)

    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> dict[str, list]:
        """Every reward's raw values on a batch (``holistic`` first)."""
        out = {}
        if self.holistic is not None:
            out[self.HOLISTIC] = compute(self.holistic, prompts, completions, **columns)
        for k, fn in self.aspects.items():
            out[k] = compute(fn, prompts, completions, **columns)
        return out

    def fit(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> dict[str, list]:
        """Fit normalisers (and ε from its quantile) on samples of the initial policy; return the raw scores."""
        raw = self.raw_scores(prompts, completions, **columns)
        self.normalizers = {k: Normalizer.fit(raw[k], name=k) for k in self.normalize if k in raw}
        if self.holistic is not None:
            z = self.normalized(raw)[self.HOLISTIC]
            self.epsilon = resolve_epsilon(self.config, z)
            self._check_empty_penalty(z, completions)
        return raw

    def _check_empty_penalty(self, z: Sequence[float | None], completions: Sequence[str]) -> None:
        """Warn when real answers of the initial policy earn less than an empty response would."""
        c = self.config
        if c.mode == "aspect_only":
            return
        real = [c.holistic_weight * float(h) for h, text in zip(z, completions) if h is not None and text.strip()]
        below = sum(r <= c.empty_return for r in real)
        if below:
            warnings.warn(
                f"empty_penalty {c.empty_return:g} is above the holistic return w_h·h of {below} of "
                f"{len(real)} initial-policy answers ({100 * below / len(real):.0f} %): PPO is paid to answer "
                f"nothing on those prompts; set empty_penalty below {min(real):.2f} (or leave it unset)",
                HierarchyWarning, stacklevel=3)

    def normalized(self, raw: dict[str, list]) -> dict[str, list]:
        return {k: [self.normalizers[k](v) for v in vals] if k in self.normalizers else list(vals)
                for k, vals in raw.items()}

    def check_fitted(self):
        """Refuse to combine before the normalisers and ε exist (they come from the initial policy's samples)."""
        missing = [k for k in self.normalize if k in self.names() and k not in self.normalizers]
        if missing or self.epsilon is None:
            raise AlarmError(
                f"rewards {missing or ['epsilon']} are not fitted yet; call RewardSet.fit on samples of the "
                "initial policy (or load a saved state) before combining"
            )

    def combine(self, prompts, completions, token_ends, **columns) -> tuple[Combined, dict[str, list]]:
        """Score a batch and combine into token rewards. Returns ``(combined, raw_scores)``."""
        self.check_fitted()
        raw = self.raw_scores(prompts, completions, **columns)
        norm = self.normalized(raw)
        result = combine(self.config, completions, token_ends, norm.get(self.HOLISTIC),
                         {k: norm[k] for k in self.aspects}, epsilon=self.epsilon)
        if self.HOLISTIC in raw:
            vals = [v for v in raw[self.HOLISTIC] if v is not None]
            result.stats["rewards/holistic/raw_mean"] = _mean(vals)
        for name, fn in [(self.HOLISTIC, self.holistic), *self.aspects.items()]:
            cut = getattr(fn, "last_stats", None) or {}
            if cut.get("inputs"):  # reward models that had to shorten a prompt to fit (never the response)
                result.stats[f"rewards/{name}/prompt_cut_rate"] = cut["prompts_cut"] / cut["inputs"]
        return result, raw

    def state(self) -> dict:
        """What a run stores to reproduce the combination: normalisers and the resolved ε."""
        return {"normalizers": {k: vars(v) for k, v in self.normalizers.items()}, "epsilon": self.epsilon}

    def load_state(self, state: dict) -> None:
        self.normalizers = {k: Normalizer(**v) for k, v in state["normalizers"].items()}
        self.epsilon = state["epsilon"]

    def sequence_rewards(self, prompts, completions, **columns) -> tuple[list[float], dict[str, float]]:
        """One return per response (R = w_h·h + 1[h ≥ ε]·Σ a), for trainers that want a scalar per sequence."""
        scored = self.score_sequences(prompts, completions, **columns)
        return scored.returns, scored.stats

    def score_sequences(self, prompts, completions, **columns) -> ScoredSequences:
        """Every reward once on a batch, combined at sequence level, with the parts integrations report.

        Dense aspects that emit values at points are summed after shaping; token-level (span) aspects need the
        generated token ids and so only work in alarm's own PPO trainer.
        """
        self.check_fitted()
        cfg = self.config
        norm = self.normalized(self.raw_scores(prompts, completions, **columns))
        for k in self.aspects:
            if any(isinstance(v, Dense) and (v.spans or v.default is not None) for v in norm[k]):
                raise AlarmError(f"aspect {k!r} is token-level; a sequence-level trainer cannot place it on tokens "
                                 "(use `alarm train`, or a sentence-level aspect)")
        one_token = [[len(c)] for c in completions]  # every emitted value lands on one pseudo-token
        holistic = norm.get(self.HOLISTIC)
        result = combine(cfg, completions, one_token, holistic, {k: norm[k] for k in self.aspects},
                         epsilon=self.epsilon)
        result.stats.pop("length/tokens")  # one pseudo-token per response here: not a token count
        with_h = holistic is not None and cfg.mode != "aspect_only"
        h_part = [cfg.empty_return if empty else (cfg.holistic_weight * float(holistic[i]) if with_h else 0.0)
                  for i, empty in enumerate(result.empty)]
        return ScoredSequences(
            returns=list(result.returns), holistic_part=h_part,
            aspect_part=[r - h if g else None for r, h, g in zip(result.returns, h_part, result.gate_open)],
            gate_open=list(result.gate_open),
            holistic_z=list(holistic) if holistic is not None else [None] * len(completions),
            aspects={k: [summarize(v, c) for v, c in zip(norm[k], completions)] for k in self.aspects},
            stats=dict(result.stats))


@dataclass
class ScoredSequences:
    """A batch scored and combined at sequence level (:meth:`RewardSet.score_sequences`); one entry per response."""

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


def as_trl_reward(reward_set: RewardSet, name: str = "alarm_hierarchical"):
    """The combination as a TRL reward function ``f(prompts, completions, **kwargs) -> list[float]``.

    TRL passes conversational completions as lists of messages; their last message's content is scored.
    The latest component statistics are kept on ``fn.last_stats`` (see :class:`ComponentLogger`).
    """

    def reward_fn(prompts, completions, **kwargs):
        prompts_t = [_as_text(p) for p in prompts]
        completions_t = [_as_text(c) for c in completions]
        columns = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(completions_t)}
        returns, stats = reward_set.sequence_rewards(prompts_t, completions_t, **columns)
        reward_fn.last_stats = stats
        log_metric = kwargs.get("log_metric")  # TRL ≥ 1.x: averaged per logging step, seen by every logger
        if callable(log_metric):
            for k, v in stats.items():
                log_metric(f"alarm/{k}", float(v))
        return returns

    reward_fn.__name__ = name
    reward_fn.last_stats = {}
    return reward_fn


def _as_text(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict) and "content" in x[-1]:
        return str(x[-1]["content"])
    raise AlarmError(f"cannot read text from a {type(x).__name__}; pass strings or chat message lists")


def trl_component_logger(reward_fn):
    """A transformers ``TrainerCallback`` adding ``reward_fn.last_stats`` (gate-open rate, each component) to logs."""
    from transformers import TrainerCallback

    class ComponentLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs is None:
                return
            extra = {f"alarm/{k}": v for k, v in reward_fn.last_stats.items() if f"alarm/{k}" not in logs}
            logs.update(extra)
            # Trainer.log appends a copy of `logs` to the history before callbacks run: update that entry too.
            if state.log_history and all(state.log_history[-1].get(k) == v for k, v in logs.items()
                                         if not k.startswith("alarm/")):
                state.log_history[-1].update(extra)

    return ComponentLogger()


__all__ = [
    "MODES", "CombineConfig", "Combined", "ScoredSequences", "HierarchyWarning", "RewardSet", "as_trl_reward", "combine",
    "hierarchy_warnings", "logistic", "over_nonempty", "resolve_epsilon", "reward_name", "trl_component_logger",
]
