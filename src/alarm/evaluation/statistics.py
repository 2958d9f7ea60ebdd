"""Statistics of paired comparisons: means with confidence intervals, win counts and win rates with their
intervals, paired differences, the paper's win-rate matrix. What reward selection, the LLM judge and the
comparison of systems share (:mod:`alarm.evaluation.compare` uses them on aligned systems).

- **Mean and CI** over prompts. ``method="bootstrap"``: percentile interval of the mean over ``n_boot``
  resamples of the prompts (seeded). ``method="t"``: mean ± t_{(1+c)/2, n−1}·s/√n with s the sample standard
  deviation (n − 1). Values where a reward does not apply (None) are left out and counted.
- **Win rate** of X over Y: on prompts where both have a value, a win when X is better by more than ``tie_tol``
  (for lower-is-better metrics "better" is lower), a loss when Y is, else a tie. Reported as the paper does:
  100·wins / (wins + losses), ties excluded, 50 when no pair is decisive (``win_rate`` keeps the fraction,
  None then), with the number of decisive pairs and a percentile bootstrap interval over prompts (seeded).
- **Matrix** (the paper's Tables 1 and 3): every system's win rate over every other and "Avg.", the mean of a
  row's win rates against the other systems. All cells and averages share one resampling of the prompts, so an
  interval of the average accounts for the cells moving together.
- **Clusters**: with ``clusters`` (a label per prompt, e.g. a question with its seeds), the bootstrap resamples
  whole clusters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from alarm.errors import AlarmError


@dataclass(frozen=True)
class MeanCI:
    mean: float | None
    low: float | None
    high: float | None
    n: int  # values used
    n_missing: int  # None values left out
    method: str
    confidence: float


@dataclass(frozen=True)
class WinCounts:
    wins: int
    losses: int
    ties: int
    n_missing: int  # prompts where either side has no value
    win_rate: float | None  # wins / (wins + losses); None when no pair is decisive
    decisive: int  # wins + losses
    win_rate_pct: float  # the paper's 100·wins / (wins + losses), 50 when no pair is decisive
    pct_low: float | None  # percentile bootstrap interval of win_rate_pct over prompts; None when nothing decisive
    pct_high: float | None
    # The paired mean difference X − Y over the prompts both have (not flipped for lower-is-better metrics), with
    # its percentile bootstrap interval from the same resampled prompts. It weighs how much each prompt moved,
    # where the win rate counts only which way; None without a shared prompt.
    mean_diff: float | None = None
    diff_low: float | None = None
    diff_high: float | None = None


def other_side(counts: Mapping[str, Any]) -> dict:
    """The win counts of X over Y (a :class:`WinCounts` as a dict) seen as Y over X: wins and losses swapped,
    the win rate and its bootstrap interval mirrored (the same resampled prompts)."""
    low, high, rate = counts["pct_low"], counts["pct_high"], counts["win_rate"]
    neg = {k: None if counts.get(k) is None else -counts[k] for k in ("mean_diff", "diff_low", "diff_high")}
    return {**counts, "wins": counts["losses"], "losses": counts["wins"],
            "win_rate": None if rate is None else 1.0 - rate, "win_rate_pct": 100.0 - counts["win_rate_pct"],
            "pct_low": None if high is None else 100.0 - high, "pct_high": None if low is None else 100.0 - low,
            "mean_diff": neg["mean_diff"], "diff_low": neg["diff_high"], "diff_high": neg["diff_low"]}


def _values(values: Sequence[float | None]) -> tuple[np.ndarray, int]:
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return np.asarray(kept, dtype=float), len(values) - len(kept)


def mean_ci(values: Sequence[float | None], method: str = "t", confidence: float = 0.95, n_boot: int = 2000,
            seed: int = 0, clusters: Sequence | None = None) -> MeanCI:
    """Mean with a t-based or percentile-bootstrap confidence interval (None values left out and counted);
    ``clusters``: the bootstrap draws whole clusters (see :func:`_resample`; missing values count as absent)."""
    if method not in ("t", "bootstrap"):
        raise AlarmError(f"confidence interval method {method!r} is unknown; use 't' or 'bootstrap'")
    if not 0 < confidence < 1:
        raise AlarmError(f"confidence must be in (0, 1), got {confidence}")
    x, missing = _values(values)
    n = len(x)
    if n == 0:
        return MeanCI(None, None, None, 0, missing, method, confidence)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, None, None, 1, missing, method, confidence)
    if method == "t":
        half = float(sps.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
        return MeanCI(mean, mean - half, mean + half, n, missing, method, confidence)
    if clusters is None:
        means = x[_resample(n, n_boot, seed)].mean(axis=1)
    else:  # resample over every unit, a missing value weighing nothing; a draw of only missing values has no
        # mean and is left out (it would make every quantile NaN)
        full = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        drawn = full[_resample(len(full), n_boot, seed, clusters)]
        held = ~np.isnan(drawn)
        counts = held.sum(axis=1)
        means = np.where(held, drawn, 0.0).sum(axis=1)[counts > 0] / counts[counts > 0]
        if not len(means):
            return MeanCI(mean, None, None, n, missing, method, confidence)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return MeanCI(mean, float(low), float(high), n, missing, method, confidence)


def wilson_interval(wins: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion wins / n (None, None when n = 0)."""
    if n == 0:
        return None, None
    z = float(sps.norm.ppf((1 + confidence) / 2))
    p = wins / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def paper_win_rate(wins, losses):
    """The paper's win rate, 100·wins / (wins + losses), and 50 when no pair is decisive; element-wise on arrays."""
    wins, losses = np.asarray(wins, dtype=float), np.asarray(losses, dtype=float)
    decided = wins + losses
    return np.where(decided > 0, 100.0 * wins / np.maximum(decided, 1.0), 50.0)


def check_bootstrap(n_boot: int, confidence: float) -> None:
    """Refuse bootstrap settings that give no interval (one line, as every user error)."""
    if n_boot < 1:
        raise AlarmError(f"the bootstrap needs at least 1 resample (--n-boot), got {n_boot}")
    if not 0 < confidence < 1:
        raise AlarmError(f"confidence must be in (0, 1), got {confidence}")


def _resample(n: int, n_boot: int, seed: int, clusters: Sequence | None = None) -> np.ndarray:
    """(n_boot, n) prompt indices; the same seed and n give the same draws, so every pair shares them.

    ``clusters`` (one label per prompt, every label on the same number of prompts — e.g. a question answered
    under several seeds): whole clusters are drawn, so correlated units are never treated as independent. With
    one prompt per cluster it is the plain bootstrap, draw for draw."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        return rng.integers(0, n, size=(n_boot, n))
    if len(clusters) != n:
        raise AlarmError(f"the bootstrap got {len(clusters)} cluster labels for {n} prompts")
    by_label: dict[str, list[int]] = {}  # in order of first appearance
    for i, c in enumerate(clusters):
        by_label.setdefault(str(c), []).append(i)
    labels, members = list(by_label), [np.asarray(m) for m in by_label.values()]
    if len({len(m) for m in members}) != 1:
        raise AlarmError("the cluster bootstrap needs every cluster to hold the same number of prompts (e.g. every "
                         "question under every seed)")
    draw = rng.integers(0, len(labels), size=(n_boot, len(labels)))
    return np.stack(members)[draw].reshape(n_boot, n)


def _percentile(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


def _boot_counts(signs: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    drawn = signs[idx]
    return (drawn > 0).sum(axis=1), (drawn < 0).sum(axis=1)


def win_rate_interval(signs: Sequence[int], n_boot: int = 2000, seed: int = 0,
                      confidence: float = 0.95, clusters: Sequence | None = None) -> tuple[float, float | None, float | None]:
    """(paper win rate, low, high) from one outcome per prompt (+1 win, −1 loss, 0 tie or missing); the interval
    is the percentile bootstrap over prompts, None when no pair is decisive."""
    check_bootstrap(n_boot, confidence)
    s = np.asarray(signs, dtype=np.int8)
    return _win_rate_and_interval(s, _resample(len(s), n_boot, seed, clusters), confidence)


def _win_rate_and_interval(s: np.ndarray, idx: np.ndarray, confidence: float) -> tuple[float, float | None, float | None]:
    """:func:`win_rate_interval` on the resampled prompt indices ``idx``."""
    wins, losses = int((s > 0).sum()), int((s < 0).sum())
    pct = float(paper_win_rate(wins, losses))
    if wins + losses == 0:
        return pct, None, None
    low, high = _percentile(paper_win_rate(*_boot_counts(s, idx)), confidence)
    return pct, low, high


def _paired_arrays(x: Sequence[float | None], y: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as float arrays, None as NaN; they must be aligned prompt by prompt."""
    if len(x) != len(y):
        raise AlarmError(f"win counts need aligned values: got {len(x)} and {len(y)}")
    return tuple(np.array([np.nan if v is None else float(v) for v in side], dtype=float) for side in (x, y))


def outcome_signs(x: Sequence[float | None], y: Sequence[float | None], higher_is_better: bool = True,
                  tie_tol: float = 0.0) -> tuple[np.ndarray, int]:
    """+1 where X is better by more than tie_tol, −1 where Y is, 0 for ties and missing values; and #missing."""
    if tie_tol < 0:
        raise AlarmError(f"tie_tol must be ≥ 0, got {tie_tol}")
    a, b = _paired_arrays(x, y)
    missing = np.isnan(a) | np.isnan(b)
    d = np.where(missing, 0.0, (1.0 if higher_is_better else -1.0) * (a - b))
    signs = np.where(np.abs(d) <= tie_tol, 0, np.sign(d)).astype(np.int8)
    return signs, int(missing.sum())


def win_counts(x: Sequence[float | None], y: Sequence[float | None], higher_is_better: bool = True,
               tie_tol: float = 0.0, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0,
               clusters: Sequence | None = None) -> WinCounts:
    """X against Y prompt by prompt; ties excluded from the win rate; lower-is-better metrics flipped. Also the
    paired mean difference X − Y with its interval (:class:`WinCounts`)."""
    check_bootstrap(n_boot, confidence)
    signs, missing = outcome_signs(x, y, higher_is_better, tie_tol)
    wins, losses = int((signs > 0).sum()), int((signs < 0).sum())
    idx = _resample(len(signs), n_boot, seed, clusters)  # one draw of the prompts for both intervals
    pct, low, high = _win_rate_and_interval(signs, idx, confidence)
    decided = wins + losses
    diff = _difference_and_interval(*_paired_arrays(x, y), idx, confidence)
    return WinCounts(wins, losses, len(signs) - decided - missing, missing, wins / decided if decided else None,
                     decided, pct, low, high, *diff)


def paired_difference(x: Sequence[float | None], y: Sequence[float | None], n_boot: int = 2000, seed: int = 0,
                      confidence: float = 0.95, clusters: Sequence | None = None) -> tuple[float | None, ...]:
    """(mean of X − Y, low, high) over the prompts where both have a value; the percentile bootstrap draws the
    same prompts (or whole clusters) as :func:`win_rate_interval` with the same seed. Nones without a shared
    prompt; a draw that holds none of them is left out."""
    check_bootstrap(n_boot, confidence)
    a, b = _paired_arrays(x, y)
    return _difference_and_interval(a, b, _resample(len(a), n_boot, seed, clusters), confidence)


def _difference_and_interval(a: np.ndarray, b: np.ndarray, idx: np.ndarray, confidence: float):
    """:func:`paired_difference` on the resampled prompt indices ``idx``."""
    both = ~(np.isnan(a) | np.isnan(b))
    if not both.any():
        return None, None, None
    d = np.where(both, a - b, 0.0)
    counts = both[idx].sum(axis=1)
    draws = d[idx].sum(axis=1)[counts > 0] / counts[counts > 0]
    if not draws.size:  # e.g. one shared prompt among many and few resamples
        return float(d[both].mean()), None, None
    low, high = _percentile(draws, confidence)
    return float(d[both].mean()), low, high


def win_rate_matrix(systems: Sequence[str], signs: Mapping[tuple[str, str], Sequence[int]], n_boot: int = 2000,
                    seed: int = 0, confidence: float = 0.95, clusters: Sequence | None = None) -> dict[str, Any]:
    """The paper's layout: ``cells[x][y]`` is x's win rate over y; ``avg[x]`` ("Avg.") the mean of x's win rates
    against the other systems. ``signs`` holds one outcome per prompt (for the first system) for each pair once.

    Every cell and average carries its percentile bootstrap interval from one shared resampling of the prompts.
    """
    check_bootstrap(n_boot, confidence)
    n = len(next(iter(signs.values()))) if signs else 0
    idx = _resample(n, n_boot, seed, clusters) if n else None
    cells: dict[str, dict[str, dict]] = {x: {} for x in systems}
    boot: dict[tuple[str, str], np.ndarray] = {}
    for (x, y), sg in signs.items():
        sg = np.asarray(sg, dtype=np.int8)
        wins, losses = int((sg > 0).sum()), int((sg < 0).sum())
        bw, bl = _boot_counts(sg, idx) if n else (np.zeros(1), np.zeros(1))
        for row, col, w, ll, bwr, blr in ((x, y, wins, losses, bw, bl), (y, x, losses, wins, bl, bw)):
            boot[row, col] = paper_win_rate(bwr, blr)
            low, high = _percentile(boot[row, col], confidence) if w + ll else (None, None)
            cells[row][col] = {"win_rate_pct": float(paper_win_rate(w, ll)), "pct_low": low, "pct_high": high,
                               "wins": w, "losses": ll, "ties": len(sg) - w - ll, "decisive": w + ll}
    avg = {}
    for x in systems:
        others = [y for y in systems if y != x]
        if not others or any(y not in cells[x] for y in others):  # "Avg." over a partial row would mislead
            continue
        decisive = sum(cells[x][y]["decisive"] for y in others)
        low, high = (_percentile(np.mean([boot[x, y] for y in others], axis=0), confidence) if decisive
                     else (None, None))
        avg[x] = {"win_rate_pct": float(np.mean([cells[x][y]["win_rate_pct"] for y in others])), "pct_low": low,
                  "pct_high": high, "decisive": decisive}
    return {"systems": list(systems), "n_prompts": n, "cells": cells, "avg": avg}
