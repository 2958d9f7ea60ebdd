"""The reward contract.

A **sequence-level** reward is any callable ``f(prompts, completions, **columns) -> list[float | None]``
(TRL's contract; ``None`` means "does not apply to this completion").

A **dense** reward has the same signature but returns, per completion, a :class:`Dense` (or ``None``):
values at character positions of the completion. :mod:`alarm.placement` maps those positions onto the tokens
that were actually generated. Mark a dense reward with ``dense = True`` (the classes here do).

Every reward also has a ``name`` used in logs (``rewards/<name>/mean``) and may set
``higher_is_better = False`` for metrics where lower is better (used by selection and win rates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from alarm.errors import AlarmError


@dataclass(frozen=True)
class Dense:
    """Values a dense reward emits for one completion.

    ``points``: ``(char_end, value)`` pairs; the value lands on the generated token that contains
    character ``char_end - 1`` (the character ending a sentence / sub-sentence). ``char_end`` is in
    ``[0, len(completion)]``; 0 (an empty completion) lands on the last generated token.

    ``spans``: ``(start, end, value)`` triples for token-level rewards; every generated token that completes a
    character inside ``[start, end)`` gets ``value`` (a later span overrides an earlier one on the same token). With
    ``default`` set, every other generated token gets ``default``; with ``default=None`` they get nothing.
    """

    points: tuple[tuple[int, float], ...] = ()
    spans: tuple[tuple[int, int, float], ...] = ()
    default: float | None = None
    level: str = "sentence"  # sentence | subsentence | token (for logs and docs)

    def values(self) -> list[float]:
        return [v for _, v in self.points] + [v for _, _, v in self.spans] + (
            [self.default] if self.default is not None else []
        )


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list: ...


def is_dense(reward: Any) -> bool:
    return bool(getattr(reward, "dense", False))


def reward_name(reward: Any) -> str:
    return getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__


def check_batch(name: str, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> None:
    """Clear errors for the batch shapes a user can get wrong."""
    if isinstance(completions, str) or isinstance(prompts, str):
        raise AlarmError(f"reward {name!r}: prompts and completions must be lists of strings, not one string")
    if len(completions) == 0:
        raise AlarmError(f"reward {name!r}: got an empty list of completions; pass at least one")
    if len(prompts) != len(completions):
        raise AlarmError(
            f"reward {name!r}: {len(prompts)} prompts but {len(completions)} completions; pass one prompt "
            "per completion (repeat a prompt for several samples)"
        )
    for key, col in columns.items():
        if isinstance(col, (list, tuple)) and len(col) != len(completions):
            raise AlarmError(
                f"reward {name!r}: column {key!r} has {len(col)} entries for {len(completions)} completions"
            )
    for i, c in enumerate(completions):
        if not isinstance(c, str):
            raise AlarmError(f"reward {name!r}: completion {i} is {type(c).__name__}, expected str")


def require_column(name: str, column: str, columns: dict[str, Any], n: int) -> list:
    if column not in columns or columns[column] is None:
        raise AlarmError(
            f"reward {name!r} needs the column {column!r} (one entry per completion); add it to the data "
            f"or set the reward's column name (got columns: {sorted(columns) or 'none'})"
        )
    col = columns[column]
    if not isinstance(col, (list, tuple)) or len(col) != n:
        raise AlarmError(f"reward {name!r}: column {column!r} must be a list with one entry per completion")
    return list(col)


def check_values(name: str, values: Sequence[Any], n: int) -> list:
    """Validate what a reward returned: right length, floats/Dense/None, nothing NaN or infinite."""
    if not isinstance(values, (list, tuple)):
        raise AlarmError(f"reward {name!r} returned {type(values).__name__}; it must return a list")
    if len(values) != n:
        raise AlarmError(f"reward {name!r} returned {len(values)} values for {n} completions")
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, Dense):
            bad = [x for x in v.values() if not math.isfinite(x)]
            if bad:
                raise AlarmError(f"reward {name!r} returned a non-finite value {bad[0]} for completion {i}")
            out.append(v)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise AlarmError(
                f"reward {name!r} returned {type(v).__name__} for completion {i}; expected a float, Dense or None"
            ) from None
        if not math.isfinite(f):
            raise AlarmError(f"reward {name!r} returned {f} for completion {i}; rewards must be finite")
        out.append(f)
    return out


def compute(reward: Any, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list:
    """Call a reward with batch checks before and value checks after."""
    name = reward_name(reward)
    check_batch(name, prompts, completions, **columns)
    return check_values(name, reward(list(prompts), list(completions), **columns), len(completions))


@dataclass
class FunctionReward:
    """Wrap a plain function as a named sequence-level reward."""

    fn: Any
    name: str = ""
    higher_is_better: bool = True
    dense: bool = field(default=False)

    def __post_init__(self):
        self.name = self.name or getattr(self.fn, "__name__", "function")

    def __call__(self, prompts, completions, **columns):
        return self.fn(prompts, completions, **columns)


def summarize(value: float | Dense | None, completion: str = "") -> float | None:
    """One number per response: the value itself, or a dense reward's mean value (:func:`summarize_dense`)."""
    if value is None:
        return None
    if isinstance(value, Dense):
        return summarize_dense(value, completion)[0]
    return float(value)


def summarize_dense(value: Dense, completion: str) -> tuple[float | None, float | None]:
    """(mean emitted value, share of emitted values > 0) of one dense reward on one response.

    Points count once each; spans (and ``default``) count per character they cover, so a token-level reward is
    weighted by how much of the text each value covers. (None, None) when nothing was emitted.
    """
    values = [v for _, v in value.points]
    if value.spans or value.default is not None:
        per_char: list[float | None] = [value.default] * len(completion)
        for start, end, v in value.spans:
            for c in range(max(0, start), min(end, len(completion))):
                per_char[c] = v
        values += [v for v in per_char if v is not None]
    if not values:
        return None, None
    return sum(values) / len(values), sum(v > 0 for v in values) / len(values)


