"""Where rewards land: map character positions of a completion to the tokens actually generated.

The completion text a reward sees is ``tokenizer.decode(ids, skip_special_tokens=True)`` of the generated
ids. Token offsets are computed from those ids by decoding growing prefixes — never by re-tokenising the
text, which can split differently than the policy did. A character belongs to the token that completes it
(a multi-byte character split over several byte-level tokens belongs to the last of them); special tokens
such as EOS cover no characters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alarm.errors import AlarmError
from alarm.rewards.base import Dense


def token_char_ends(tokenizer, ids: Sequence[int]) -> tuple[str, list[int]]:
    """Decode ``ids`` and return ``(text, ends)``: ``ends[i]`` = characters of ``text`` covered by tokens 0..i."""
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ends: list[int] = []
    covered = 0
    for i in range(len(ids)):
        if covered < len(text):
            prefix = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
            # Longest common prefix with the full text: an incomplete multi-byte character (decoded as U+FFFD)
            # or a space the tokenizer only emits once the next token arrives does not count yet.
            n = min(len(prefix), len(text))
            k = covered
            while k < n and prefix[k] == text[k]:
                k += 1
            covered = max(covered, k)
        ends.append(covered)
    if ends and ends[-1] != len(text):
        # Text only a later normalisation produces (e.g. decode clean-up): give it to the last token.
        ends[-1] = len(text)
    return text, ends


def char_to_token(ends: Sequence[int], char_end: int) -> int:
    """Index of the token containing character ``char_end - 1``; 0 / empty text maps to the last token."""
    if not ends:
        raise AlarmError("cannot place a reward on a completion with no generated tokens")
    if char_end <= 0:
        return len(ends) - 1
    if char_end > ends[-1]:
        raise AlarmError(
            f"reward position {char_end} lies past the end of the completion ({ends[-1]} characters); "
            "dense rewards must return positions inside the completion text they were given"
        )
    lo, hi = 0, len(ends) - 1
    while lo < hi:  # first token whose end reaches char_end
        mid = (lo + hi) // 2
        if ends[mid] >= char_end:
            hi = mid
        else:
            lo = mid + 1
    return lo


def place(value: float | Dense | None, ends: Sequence[int], shape=None) -> torch.Tensor:
    """Per-token reward vector of length ``len(ends)`` holding ``value``.

    A float lands on the last generated token. A :class:`Dense` lands at its character positions (values
    on the same token add up) and spans. ``shape`` (e.g. the logistic) is applied to every emitted value
    before placement, so positions where nothing is emitted stay exactly 0.
    """
    n = len(ends)
    out = torch.zeros(n, dtype=torch.float64)
    if value is None:
        return out
    if n == 0:
        raise AlarmError("cannot place a reward on a completion with no generated tokens")
    f = shape or (lambda v: v)
    if not isinstance(value, Dense):
        out[n - 1] += f(float(value))
        return out
    if value.spans or value.default is not None:
        token_value: list[float | None] = [value.default] * n
        starts = [0] + list(ends[:-1])
        for s, e, v in value.spans:
            if e <= s:
                continue  # an empty span covers no character
            for t in range(n):
                # the token completes a character of the span; tokens completing none (partial multi-byte
                # pieces, EOS) own no character and keep the default, like points never land on them
                if starts[t] < ends[t] and starts[t] < e and ends[t] > s:
                    token_value[t] = v
        for t, v in enumerate(token_value):
            if v is not None:
                out[t] += f(float(v))
    for pos, v in value.points:
        out[char_to_token(ends, pos)] += f(float(v))
    return out
