"""Compare systems on the same prompts: per-metric means with confidence intervals, pairwise win rates by every
reward, an optional LLM judge, and a report (JSON + Markdown + PNG).

Statistics, precisely:
- **Mean and CI** over prompts, per system and metric. ``method="bootstrap"`` (compare's default): percentile
  interval of the mean over ``n_boot`` resamples of the prompts (seeded). ``method="t"``: mean ± t_{(1+c)/2,
  n−1}·s/√n with s the sample standard deviation (n − 1). Responses where a reward does not apply (None) are left
  out of that metric and counted.
- **Win rate** of X over Y by a metric: on prompts where both have a value, a win when X is better by more than
  ``tie_tol`` (for lower-is-better metrics "better" is lower), a loss when Y is, else a tie. Reported as the paper
  does: 100·wins / (wins + losses), ties excluded, 50 when no pair is decisive (``win_rate`` keeps the fraction,
  None then), with the number of decisive pairs and a percentile bootstrap interval over prompts (seeded).
- **Matrix** (the paper's Tables 1 and 3): every system's win rate over every other, by each metric and by the
  judge, and "Avg.", the mean of a row's win rates against the other systems. All cells and averages share one
  resampling of the prompts, so an interval of the average accounts for the cells moving together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from alarm.errors import AlarmError
from alarm.evaluation.judge import OUTCOME_SIGN, summarize_outcomes
from alarm.evaluation.plots import plot_win_rate_heatmaps
from alarm.io import write_json_atomic

__all__ = ["compare_scored", "other_side", "MeanCI", "WinCounts", "Alignment", "mean_ci", "wilson_interval", "paper_win_rate", "win_rate_interval", "paired_difference", "format_difference",
           "win_counts", "win_rate_matrix", "align_systems", "compare_systems", "judge_systems", "report_markdown",
           "plot_means", "plot_win_rates"]


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


def _check_boot(n_boot: int, confidence: float) -> None:
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
    _check_boot(n_boot, confidence)
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


def _signs(x: Sequence[float | None], y: Sequence[float | None], higher_is_better: bool = True,
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
    _check_boot(n_boot, confidence)
    signs, missing = _signs(x, y, higher_is_better, tie_tol)
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
    _check_boot(n_boot, confidence)
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
    _check_boot(n_boot, confidence)
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


# ---------------------------------------------------------------------------------------------------------
# Aligning systems by prompt id


@dataclass
class Alignment:
    prompt_ids: list[str]  # prompts every system answered, in the first system's order
    records: dict[str, dict[str, dict]]  # system -> prompt id -> record
    excluded: dict[str, list[str]]  # system -> prompt ids it has that were left out (others lack them)
    missing: dict[str, list[str]]  # system -> prompt ids other systems have that it lacks


def align_systems(systems: Mapping[str, Sequence[Mapping[str, Any]]], sample: int = 0,
                  allow_missing: bool = False) -> Alignment:
    """One record per (system, prompt) — sample number ``sample`` — aligned by ``prompt_id``.

    Prompts that not every system answered are an error unless ``allow_missing``; then they are left out of
    every comparison and listed per system in the result (nothing is lost silently).
    """
    if len(systems) < 2:
        raise AlarmError(f"compare needs at least two systems, got {len(systems)}")
    by_system: dict[str, dict[str, dict]] = {}
    for name, records in systems.items():
        chosen: dict[str, dict] = {}
        for i, r in enumerate(records):
            if "prompt_id" not in r:
                raise AlarmError(f"system {name!r}: record {i} has no 'prompt_id'; compare reads generation files")
            if int(r.get("sample", 0)) != sample:
                continue
            pid = str(r["prompt_id"])
            if pid in chosen:
                raise AlarmError(f"system {name!r}: prompt {pid!r} appears twice with sample {sample}")
            chosen[pid] = dict(r)
        if not chosen:
            raise AlarmError(f"system {name!r} has no records with sample {sample}; choose another --sample")
        by_system[name] = chosen
    union: dict[str, None] = {}
    for chosen in by_system.values():
        union.update(dict.fromkeys(chosen))
    common = [p for p in union if all(p in c for c in by_system.values())]
    missing = {n: [p for p in union if p not in c] for n, c in by_system.items()}
    excluded = {n: [p for p in c if p not in set(common)] for n, c in by_system.items()}
    if any(missing.values()) and not allow_missing:
        counts = ", ".join(f"{n} lacks {len(m)}" for n, m in missing.items() if m)
        example = next(m[0] for m in missing.values() if m)
        raise AlarmError(
            f"systems answered different prompts ({counts}; e.g. {example!r}); generate the missing prompts "
            "or pass --allow-missing to compare only the prompts every system answered"
        )
    if not common:
        raise AlarmError("no prompt was answered by every system; nothing to compare")
    first = next(iter(by_system.values()))
    order = [p for p in first if p in set(common)]
    return Alignment(order, by_system, excluded, missing)


def _metric_values(al: Alignment, system: str, metric: str) -> list[float | None]:
    return [(al.records[system][p].get("scores") or {}).get(metric) for p in al.prompt_ids]


def _cluster_labels(al: Alignment, clusters: Mapping[str, str] | None) -> list[str] | None:
    if clusters is None:
        return None
    missing = [p for p in al.prompt_ids if p not in clusters]
    if missing:
        raise AlarmError(f"no cluster label for prompt {missing[0]!r} ({len(missing)} in all)")
    return [str(clusters[p]) for p in al.prompt_ids]


def compare_systems(al: Alignment, metrics: Sequence[str], higher_is_better: Mapping[str, bool] | None = None,
                    method: str = "bootstrap", confidence: float = 0.95, tie_tol: float = 0.0, n_boot: int = 2000,
                    seed: int = 0, clusters: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Means + CIs per system and metric, win counts for every pair of systems (once) and metric, and per metric
    the paper's win-rate matrix with its "Avg." column. ``clusters`` (prompt id → label, e.g. a question asked
    under several seeds): every bootstrap draws whole clusters."""
    _check_boot(n_boot, confidence)
    cl = _cluster_labels(al, clusters)
    directions = {m: True for m in metrics} | dict(higher_is_better or {})
    systems = list(al.records)
    means = {s: {m: asdict(mean_ci(_metric_values(al, s, m), method, confidence, n_boot, seed, cl)) for m in metrics}
             for s in systems}
    pairs = {}
    for x, y in combinations(systems, 2):
        pairs[f"{x} vs {y}"] = {
            "x": x, "y": y,
            "metrics": {m: asdict(win_counts(_metric_values(al, x, m), _metric_values(al, y, m),
                                             directions[m], tie_tol, confidence, n_boot, seed, cl)) for m in metrics},
        }
    matrices = {m: win_rate_matrix(systems, {(x, y): _signs(_metric_values(al, x, m), _metric_values(al, y, m),
                                                            directions[m], tie_tol)[0]
                                             for x, y in combinations(systems, 2)}, n_boot, seed, confidence, cl)
                for m in metrics}
    return {
        "systems": systems,
        "metrics": list(metrics),
        "higher_is_better": {m: directions[m] for m in metrics},
        "n_prompts": len(al.prompt_ids),
        "excluded_prompts": {s: len(v) for s, v in al.excluded.items()},
        "missing_prompts": {s: len(v) for s, v in al.missing.items()},
        "ci": {"method": method, "confidence": confidence, "n_boot": n_boot, "seed": seed,
               "clusters": None if cl is None else len(set(cl))},
        "tie_tol": tie_tol,
        "means": means,
        "pairs": pairs,
        "matrices": matrices,
    }


def judge_question(record: Mapping[str, Any]) -> str:
    """What the judge is shown as the request: question + passages for QA records, else the prompt text."""
    question = record.get("question")
    if isinstance(question, str) and question.strip():
        passages = record.get("passages")
        if isinstance(passages, list) and passages:
            texts = [p.get("content", p.get("text", "")) if isinstance(p, dict) else str(p) for p in passages]
            numbered = "\n".join(f"[{i}] {t}" for i, t in enumerate(texts, start=1))
            return f"Passages:\n{numbered}\n\nQuestion: {question}"
        return question
    return str(record.get("prompt", ""))


def judge_systems(judge, al: Alignment, max_prompts: int | None = None, progress: bool = True, n_boot: int = 2000,
                  seed: int = 0, confidence: float = 0.95, clusters: Mapping[str, str] | None = None,
                  pairs_with: str | None = None) -> dict[str, Any]:
    """The judge on every pair of systems (both orders each); outcomes are for the first system of a pair; and the
    judge's win-rate matrix. ``pairs_with``: only the pairs that include this system (one row of the matrix: the
    VCB paper's table of one method against each baseline, at a fraction of the calls)."""

    prompts = al.prompt_ids
    if max_prompts and clusters is not None:  # whole clusters only: a cut one would be refused by the bootstrap
        first: dict[str, int] = {}
        for p in prompts:
            first[str(clusters[p])] = first.get(str(clusters[p]), 0) + 1
        size = next(iter(first.values()), 1)
        keep = set(list(first)[: max(1, max_prompts // size)])
        prompts = [p for p in prompts if str(clusters[p]) in keep]
    elif max_prompts:
        prompts = prompts[:max_prompts]
    systems = list(al.records)
    if pairs_with is not None and pairs_with not in systems:
        raise AlarmError(f"judge pairs with {pairs_with!r}: no such system (have: {', '.join(systems)})")
    cl = None if clusters is None else [str(clusters[p]) for p in prompts]
    out, signs = {}, {}
    for x, y in combinations(systems, 2):
        if pairs_with is not None and pairs_with not in (x, y):
            continue
        items = [(judge_question(al.records[x][p]), al.records[x][p]["completion"], al.records[y][p]["completion"])
                 for p in prompts]
        outcomes = judge.judge_many(items, progress=f"judge {x} vs {y}" if progress else None)
        out[f"{x} vs {y}"] = {"x": x, "y": y, **summarize_outcomes(outcomes, n_boot, seed, confidence, cl),
                              "outcomes": {p: o.outcome for p, o in zip(prompts, outcomes)}}
        signs[x, y] = [OUTCOME_SIGN[o.outcome] for o in outcomes]
    return {"n_prompts": len(prompts), "pairs": out,
            "matrix": win_rate_matrix(systems, signs, n_boot, seed, confidence, cl)}


# ---------------------------------------------------------------------------------------------------------
# Report


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_difference(w: Mapping[str, Any]) -> str:
    """A paired mean difference with its interval: '+0.234 [+0.053, +0.448]' (— without one)."""
    if w.get("mean_diff") is None:
        return "—"
    if w.get("diff_low") is None:
        return f"{w['mean_diff']:+.3f} [–]"
    return f"{w['mean_diff']:+.3f} [{w['diff_low']:+.3f}, {w['diff_high']:+.3f}]"


def _wr(c: Mapping[str, Any]) -> str:
    """A win rate as the paper prints it, with its interval and the number of decisive pairs."""
    interval = "–" if c["pct_low"] is None else f"{c['pct_low']:.1f}, {c['pct_high']:.1f}"
    return f"{c['win_rate_pct']:.1f} [{interval}] ({c['decisive']})"


def matrix_markdown(matrix: Mapping[str, Any], title: str) -> list[str]:
    """One evaluator's block of the paper's Tables 1 / 3: rows over columns, then "Avg."."""
    systems = matrix["systems"]
    lines = [f"**{title}**", "", "| | " + " | ".join(systems) + " | Avg. |", "|---|" + "---|" * (len(systems) + 1)]
    for x in systems:
        cells = ["—" if y == x or y not in matrix["cells"][x] else _wr(matrix["cells"][x][y]) for y in systems]
        avg = _wr(matrix["avg"][x]) if x in matrix["avg"] else "—"
        lines.append(f"| {x} | " + " | ".join(cells) + f" | {avg} |")
    return [*lines, ""]


def _matrices(result: Mapping[str, Any], judge: Mapping[str, Any] | None) -> list[tuple[str, str, Any]]:
    """(short name, title, win-rate matrix) for every reward compared, then the judge's."""
    out = [(m, f"by {m} ({'higher' if result['higher_is_better'][m] else 'lower'} is better)", result["matrices"][m])
           for m in result["metrics"] if m in result.get("matrices", {})]
    if judge and "matrix" in judge:
        out.append((f"judge {judge.get('model', '?')}",
                    f"by the LLM judge {judge.get('model', '?')} ({judge['n_prompts']} prompts)", judge["matrix"]))
    return out


def _avg_lines(result: Mapping[str, Any], matrices) -> list[str]:
    lines = ["| system | " + " | ".join(short for short, _, _ in matrices) + " |", "|---|" + "---|" * len(matrices)]
    for x in result["systems"]:
        lines.append(f"| {x} | " + " | ".join(_wr(mx["avg"][x]) if x in mx["avg"] else "—"
                                              for _, _, mx in matrices) + " |")
    return lines


def _means_lines(result: Mapping[str, Any]) -> list[str]:
    lines = ["| metric | better | " + " | ".join(result["systems"]) + " |",
             "|---|---|" + "---|" * len(result["systems"])]
    for m in result["metrics"]:
        cells = []
        for s in result["systems"]:
            c = result["means"][s][m]
            cell = f"{_f(c['mean'])} [{_f(c['low'])}, {_f(c['high'])}]"
            if c["n_missing"]:
                cell += f" (n={c['n']}, {c['n_missing']} n/a)"
            cells.append(cell)
        better = "higher" if result["higher_is_better"][m] else "lower"
        lines.append(f"| {m} | {better} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(result: Mapping[str, Any], judge: Mapping[str, Any] | None = None) -> str:
    """What `alarm compare` prints: the means with their intervals and each system's average win rate by every
    evaluator (the full report, pair by pair, is report.md)."""
    lines = [f"{result['n_prompts']} prompts; means [{result['ci']['confidence']:.0%} interval]:", ""]
    if result["metrics"]:
        lines += [*_means_lines(result), ""]
    matrices = _matrices(result, judge)
    if matrices and len(result["systems"]) > 1:
        lines += ["Average win rate over the other systems [interval] (decisive pairs):", "",
                  *_avg_lines(result, matrices), ""]
    return "\n".join(lines)


def report_markdown(result: Mapping[str, Any], judge: Mapping[str, Any] | None = None,
                    plots: Sequence[str] = ()) -> str:
    ci = result["ci"]
    n_boot = ci.get("n_boot", 2000)
    over = "prompts" if not ci.get("clusters") else f"{ci['clusters']} clusters of prompts (whole clusters drawn)"
    how = ("Student-t interval (mean ± t·s/√n)" if ci["method"] == "t"
           else f"percentile bootstrap over {over} ({n_boot} resamples, seed {ci.get('seed', 0)})")
    lines = [f"# Comparison of {', '.join(result['systems'])}", "",
             f"{result['n_prompts']} prompts answered by every system. Means with {ci['confidence']:.0%} "
             f"confidence intervals: {how}.", ""]
    if any(result["excluded_prompts"].values()):
        lines += ["Prompts left out because another system lacks them (--allow-missing): "
                  + ", ".join(f"{s}: {n}" for s, n in result["excluded_prompts"].items()) + ".",
                  "Prompts each system lacks: "
                  + ", ".join(f"{s}: {n}" for s, n in result["missing_prompts"].items()) + ".", ""]
    metrics = result["metrics"]
    matrices = _matrices(result, judge)
    if matrices and len(result["systems"]) > 1:
        lines += ["## Win rates (the paper's layout)", "",
                  "Each cell: the row system's win rate over the column system, 100·wins / (wins + losses) (ties "
                  "excluded; 50 when no pair is decisive), its " f"{ci['confidence']:.0%} percentile bootstrap "
                  f"interval over prompts ({n_boot} resamples) and, in parentheses, the number of decisive pairs. "
                  "Avg.: the mean of the row's win rates against the other systems.", ""]
        lines += ["Avg. by each evaluator:", "", *_avg_lines(result, matrices), ""]
        for _, title, mx in matrices:
            lines += matrix_markdown(mx, title)
    if metrics:
        lines += ["## Means", "", *_means_lines(result)]
        lines += ["", "## Win rates by reward, pair by pair", "",
                  "Win rate of the first system = 100·wins / (wins + losses); ties excluded (50 when none is "
                  f"decisive); lower-is-better metrics flipped; ties within {result['tie_tol']:g}. Mean difference: "
                  "of the paired values, not flipped. Intervals: "
                  f"{ci['confidence']:.0%} percentile bootstrap over {over}.", ""]
        for label, pair in result["pairs"].items():
            lines += [f"### {label}", "", "| metric | win rate | interval | decisive | wins | losses | ties | n/a | "
                      f"mean difference ({pair['x']} − {pair['y']}) [interval] |", "|---|---|---|---|---|---|---|---|---|"]
            for m in metrics:
                w = pair["metrics"][m]
                lines.append(f"| {m} | {w['win_rate_pct']:.1f} | [{_f(w['pct_low'], 1)}, {_f(w['pct_high'], 1)}] | "
                             f"{w['decisive']} | {w['wins']} | {w['losses']} | {w['ties']} | {w['n_missing']} | "
                             f"{format_difference(w)} |")
            lines.append("")
    if judge:
        lines += ["## LLM judge", "",
                  f"Judge {judge.get('model', '?')} on {judge['n_prompts']} prompts, each pair in both orders: a win "
                  "counts only when both orders agree, anything else is a tie; identical responses are ties without "
                  "a request; an unreadable reply (after a re-ask) is a tie, logged, and asked again on a rerun. "
                  "Win rate = 100·wins / (wins + losses) (50 when none is decisive), with its bootstrap interval.", "",
                  "| pair | win rate | interval | decisive | wins | losses | ties (disagree / both tie / unparsed / "
                  "identical) | verdicts parsed | position consistency |", "|---|---|---|---|---|---|---|---|---|"]
        for label, j in judge["pairs"].items():
            r = j["ties_by_reason"]
            lines.append(f"| {label} | {j['win_rate_pct']:.1f} | [{_f(j['pct_low'], 1)}, {_f(j['pct_high'], 1)}] | "
                         f"{j['decisive']} | {j['wins']} | {j['losses']} | {j['ties']} ({r['disagree']} / "
                         f"{r['both_tie']} / {r['unparsed']} / {r.get('identical', 0)}) | "
                         f"{j['verdicts_parsed']}/{j['verdicts']} | {_f(j['position_consistency'], 2)} |")
        lines.append("")
    for p in plots:
        lines += [f"![{Path(p).stem}]({Path(p).name})", ""]
    return "\n".join(lines)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_means(result: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per metric: each system's mean with its confidence interval."""
    metrics, systems = result["metrics"], result["systems"]
    cols = min(3, max(1, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / cols))
    fig = _figure(3.6 * cols, 2.8 * rows)
    for k, m in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, s in enumerate(systems):
            c = result["means"][s][m]
            if c["mean"] is None:
                continue
            err = None if c["low"] is None else [[c["mean"] - c["low"]], [c["high"] - c["mean"]]]
            ax.bar(i, c["mean"], yerr=err, capsize=4, color=f"C{i}")
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(systems, rotation=15, ha="right", fontsize=8)
        ax.set_title(f"{m} ({'↑' if result['higher_is_better'][m] else '↓'} better)", fontsize=9)
    fig.suptitle(f"Means, {result['ci']['confidence']:.0%} CI ({result['ci']['method']})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_win_rates(result: Mapping[str, Any], path: str | Path, judge: Mapping[str, Any] | None = None) -> Path:
    """The win-rate matrices as heatmaps, one per reward (and the judge): each cell the row system's win rate
    over the column system, with its interval (:func:`alarm.evaluation.plots.plot_win_rate_heatmaps`)."""
    matrices = [(short, mx) for short, _, mx in _matrices(result, judge)]
    return Path(plot_win_rate_heatmaps(matrices, path, result["ci"]["confidence"])["path"])


def compare_scored(systems: Mapping[str, Sequence[Mapping[str, Any]]], directions: Mapping[str, bool],
                   out: str | Path, metrics: Sequence[str] | None = None, method: str = "bootstrap",
                   confidence: float = 0.95, tie_tol: float = 0.0, n_boot: int = 2000, seed: int = 0,
                   sample: int = 0, allow_missing: bool = False, judge=None, judge_max_prompts: int | None = None,
                   files: Mapping[str, str] | None = None, progress: bool = False, info=None,
                   clusters: Mapping[str, str] | None = None, judge_pairs_with: str | None = None):
    """`alarm compare` as a function: scored records per system → ``compare.json``, ``report.md`` and plots in
    ``out`` (a run's own evaluation calls it too). Returns ``(result, judge_result, plots)``."""
    import json

    al = align_systems(systems, sample=sample, allow_missing=allow_missing)
    if any(al.missing.values()) and info is not None:
        info(f"compare: --allow-missing: comparing the {len(al.prompt_ids)} common prompts; left out: "
             + ", ".join(f"{s} {len(v)}" for s, v in al.excluded.items()))
    names = list(systems)
    per_system = [{k for p in al.prompt_ids for k in (al.records[s][p].get("scores") or {})} for s in names]
    common = set.intersection(*per_system)
    metrics = list(metrics) if metrics else sorted(common)
    unknown = [m for m in metrics if m not in common]
    if unknown:
        raise AlarmError(f"metric {unknown[0]!r} is not scored for every system (common: {', '.join(sorted(common)) or 'none'})")
    if not metrics and judge is None:
        raise AlarmError("nothing to compare: the files have no common scores (run alarm score) and no --judge-url")
    result = compare_systems(al, metrics, directions, method, confidence, tie_tol, n_boot, seed, clusters)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    judge_result = None
    if judge is not None:
        judge_result = judge_systems(judge, al, judge_max_prompts, progress=progress, n_boot=n_boot, seed=seed,
                                     confidence=confidence, clusters=clusters, pairs_with=judge_pairs_with)
        judge_result["model"] = judge.config.model
        judge_result["requests"] = judge.requests_made
        judge_result["unparsed_replies"] = judge.unparsed
    plots = [plot_means(result, out / "means.png")] if metrics else []
    if result["pairs"] and (metrics or judge_result):
        plots.append(plot_win_rates(result, out / "win_rates.png", judge_result))
    write_json_atomic(out / "compare.json", json.loads(json.dumps(
        {**result, "files": dict(files or {}), "excluded_prompt_ids": al.excluded, "judge": judge_result},
        default=str)))
    (out / "report.md").write_text(report_markdown(result, judge_result, [str(p) for p in plots]))
    return result, judge_result, plots
