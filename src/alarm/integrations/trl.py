"""ALaRM's hierarchical reward as a TRL reward function (GRPOTrainer, RLOOTrainer; TRL ≥ 1.16).

    from alarm.integrations.trl import AlarmReward
    reward = AlarmReward(reward_set)                 # a fitted RewardSet (or AlarmReward.from_run("runs/x"))
    trainer = GRPOTrainer(model, reward_funcs=[reward], args=GRPOConfig(...), train_dataset=...)

Each call scores the batch with every reward once and returns R = w_h·h + 1[h ≥ ε]·Σ_k w_k·s(r_k) per
completion. Every component goes through TRL's ``log_metric`` (``alarm/gate_open_rate``,
``alarm/rewards/holistic/mean``, ``alarm/rewards/<aspect>/mean``, ``alarm/hierarchy/violated``, ...) and
the per-completion values through ``log_extra`` (the completions table: ``alarm/gate_open``, ...).
:class:`AsyncAlarmReward` is the same with ``async def __call__``: TRL awaits it beside its other async
rewards, and the scoring runs in a worker thread so it does not stall TRL's event loop.

**Aggregation.** TRL sums several reward functions (``reward_weights``) and normalises within each group of
generations. The single combined function is exact under both ``multi_objective_aggregation`` modes: it is
one column, so per-reward and whole-sum normalisation coincide. :meth:`AlarmReward.split` gives two
columns instead, ``alarm_holistic`` (w_h·h) and ``alarm_aspects`` (Σ_k w_k·s(r_k), 0 below ε), so
TRL logs them apart. Their sum is R only under ``sum_then_normalize`` (TRL's default; RLOO always sums
first). Under ``normalize_then_sum`` each column is z-scored within the group
on its own: the aspect column is normalised over the gated-in completions only and can push a gated-in
completion below a gated-out one, so the hierarchy no longer holds; ``split`` refuses that setting.

No ``None`` or NaN goes to TRL (a ``None`` under per-reward normalisation makes NaN advantages): a
completion that cannot be scored raises an error naming it, or gets ``fallback`` (logged as a warning and
as ``alarm/fallbacks``).
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from alarm.combine import HierarchyWarning, RewardSet, ScoredSequences
from alarm.errors import AlarmError
from alarm.integrations.run_rewards import fitted_reward_set, score_for_engine

_TRL_KWARGS = ("trainer_state", "log_metric", "log_extra", "completion_ids", "environments")


def _text(x) -> str:
    """A TRL prompt/completion as text: a string, or the last message of a conversation."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict) and "content" in x[-1]:
        content = x[-1]["content"]
        if isinstance(content, list):  # content blocks: keep the text parts
            return "".join(b.get("text", "") for b in content if isinstance(b, dict))
        return str(content)
    raise AlarmError(f"cannot read text from a {type(x).__name__}; TRL passes strings or chat message lists")


def aggregation_mode(args) -> str:
    """TRL's ``multi_objective_aggregation`` for these trainer args (RLOO has none: it sums first)."""
    return getattr(args, "multi_objective_aggregation", "sum_then_normalize")


class AlarmReward:
    """The combined hierarchical reward as one TRL reward function (exact under every aggregation mode).

    ``question_column``: a dataset column holding the text the rewards should read as the prompt (our PPO
    gives rewards the question, not the chat-formatted prompt); used when present, else TRL's prompt.
    ``last`` holds the latest batch's :class:`~alarm.combine.ScoredSequences`.
    """

    def __init__(self, reward_set: RewardSet, name: str = "alarm", log_prefix: str = "alarm/",
                 question_column: str = "question", log_completions: bool = True, fallback: float | None = None):
        if not isinstance(reward_set, RewardSet):
            raise AlarmError(f"AlarmReward needs an alarm RewardSet, got {type(reward_set).__name__}")
        self.reward_set = reward_set
        self.__name__ = name  # TRL names the column (rewards/<name>/mean) after it
        self.log_prefix = log_prefix
        self.question_column = question_column
        self.log_completions = log_completions
        self.fallback = fallback
        self.last: ScoredSequences | None = None
        self._lock = threading.Lock()
        self._cache: tuple[Any, ScoredSequences] | None = None
        self._split = False

    @classmethod
    def from_run(cls, run: str | None = None, config: str | None = None, state: str | None = None, **kw):
        """The reward of a finished ``alarm run`` (its recipe, normalisers, ε and kept aspects)."""
        return cls(fitted_reward_set(config=config, state=state, run=run), **kw)

    # -- scoring --------------------------------------------------------------------------------------

    def _inputs(self, prompts, completions, kwargs) -> tuple[list[str], list[str], dict]:
        completions_t = [_text(c) for c in completions]
        n = len(completions_t)
        columns = {k: list(v) for k, v in kwargs.items()
                   if k not in _TRL_KWARGS and isinstance(v, (list, tuple)) and len(v) == n}
        question = columns.get(self.question_column)
        prompts_t = [str(q) for q in question] if question is not None and all(q is not None for q in question) \
            else [_text(p) for p in prompts]
        return prompts_t, completions_t, columns

    def scored(self, prompts, completions, **kwargs) -> ScoredSequences:
        """Score the batch once; a second call on the same batch (the other half of a split) reuses it."""
        prompts_t, completions_t, columns = self._inputs(prompts, completions, kwargs)
        key = (tuple(prompts_t), tuple(completions_t), getattr(kwargs.get("trainer_state"), "global_step", None))
        with self._lock:
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]
            result, fell_back = score_for_engine(self.reward_set, prompts_t, completions_t, columns,
                                                 fallback=self.fallback, who="alarm TRL reward")
            result.stats["fallbacks"] = float(sum(fell_back))
            self._cache = (key, result)
            self.last = result
            self._log(result, kwargs)
            return result

    def _log(self, result: ScoredSequences, kwargs) -> None:
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if callable(log_metric):
            for k, v in result.stats.items():
                log_metric(f"{self.log_prefix}{k}", float(v))
        if callable(log_extra) and self.log_completions:
            log_extra(f"{self.log_prefix}gate_open", [bool(g) for g in result.gate_open])
            if any(h is not None for h in result.holistic_z):
                log_extra(f"{self.log_prefix}holistic_z", list(result.holistic_z))

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return list(self.scored(prompts, completions, **kwargs).returns)

    # -- two columns ----------------------------------------------------------------------------------

    def split(self, args) -> list:
        """``[alarm_holistic, alarm_aspects]``: the return as two TRL columns whose sum is R.

        ``args``: the GRPOConfig/RLOOConfig they will train under. Refused under ``normalize_then_sum``
        (see the module docstring); give both the same ``reward_weights`` (a common factor keeps R's order).
        """
        mode = aggregation_mode(args)
        if mode == "normalize_then_sum":
            raise AlarmError(
                "the split holistic + gated-aspect rewards are exact only under multi_objective_aggregation="
                "'sum_then_normalize': 'normalize_then_sum' z-scores the gated aspect column on its own and breaks "
                "the hierarchy; use the single AlarmReward (exact in both modes) or sum_then_normalize")
        weights = getattr(args, "reward_weights", None)
        if weights is not None and len(weights) == 2 and float(weights[0]) != float(weights[1]):
            warnings.warn(f"reward_weights {list(weights)} differ between alarm_holistic and alarm_aspects: the "
                          "sum is no longer the hierarchical return (w_h and the aspect weights belong in the "
                          "recipe's combine settings)", HierarchyWarning, stacklevel=2)
        self._split = True
        part = _AsyncPart if isinstance(self, AsyncAlarmReward) else _Part
        return [part(self, "holistic"), part(self, "aspects")]

    def check_args(self, args, reward_funcs: Sequence | None = None) -> None:
        """Re-check the aggregation mode once the trainer exists (``on_train_begin``), and warn when other
        reward functions are summed with the gated one (the guarantee covers the alarm reward alone)."""
        if self._split and aggregation_mode(args) == "normalize_then_sum":
            raise AlarmError("alarm_holistic + alarm_aspects under multi_objective_aggregation='normalize_then_sum' "
                             "is not the hierarchical reward; use the single AlarmReward or sum_then_normalize")
        if reward_funcs is not None:
            others = [f for f in reward_funcs if f is not self and not (isinstance(f, _Part) and f.owner is self)]
            if others:
                warnings.warn(f"{len(others)} other reward function(s) are added to the alarm reward: the hierarchy "
                              "guarantee holds for the alarm reward alone", HierarchyWarning, stacklevel=2)

    def callback(self):
        """A ``TrainerCallback`` that runs :meth:`check_args` when training starts."""
        from transformers import TrainerCallback

        owner = self

        class AlarmAggregationCheck(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                owner.check_args(args)

        return AlarmAggregationCheck()


def _column(result: ScoredSequences, which: str) -> list[float]:
    """A split column, never None: a gated-out completion's aspect part is 0 (what sum_then_normalize made
    of None too)."""
    if which == "holistic":
        return [float(x) for x in result.holistic_part]
    return [0.0 if x is None else float(x) for x in result.aspect_part]


class _Part:
    """One of the two columns of :meth:`AlarmReward.split`; both read one shared scoring pass."""

    def __init__(self, owner: AlarmReward, which: str):
        self.owner = owner
        self.which = which
        self.__name__ = f"{owner.__name__}_{which}"

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return _column(self.owner.scored(prompts, completions, **kwargs), self.which)


class _AsyncPart(_Part):
    async def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return _column(await asyncio.to_thread(self.owner.scored, prompts, completions, **kwargs), self.which)


class AsyncAlarmReward(AlarmReward):
    """:class:`AlarmReward` with ``async def __call__`` (TRL ≥ 1.16 awaits it with its other async rewards);
    the scoring runs in a worker thread, so reward models and HTTP calls do not block TRL's event loop."""

    async def __call__(self, prompts, completions, **kwargs) -> list[float]:
        result = await asyncio.to_thread(self.scored, prompts, completions, **kwargs)
        return list(result.returns)


__all__ = ["AlarmReward", "AsyncAlarmReward", "aggregation_mode"]
