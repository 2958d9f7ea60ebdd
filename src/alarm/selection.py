"""Reward selection (docs/method.md §2.3): which aspect rewards agree with the holistic reward on paired responses.

For each pair i (two responses to one prompt) and each aspect, H = sign(h_a − h_b) and M = sign(m_a − m_b)
(M flipped for lower-is-better aspects; differences within ``tie_tol`` count as ties). The paper's conflict
rate is #{H≠0, M≠0, M≠H} / #{H≠0}. Because an aspect that always ties never conflicts, we also report the
agreement among pairs where both are decisive, the aspect's tie rate, and rank correlations over single
responses, and :func:`select_aspects` can refuse tie-heavy aspects (``min_decisive``).

Undefined quantities (0/0, correlation of a constant) are ``None``, never NaN.

The paper's protocol (docs/method.md §2.3, §7; the default of ``alarm run`` and ``alarm select``): each pair is the
initial policy's greedy output (side a) against a pure sample (T 1, top-p 1, top-k 0; side b), and besides each
aspect's conflict ("inconsistency") it reports each reward's greedy-vs-sampling win rate, the holistic reward's
own being the reference line of its Figures 3–4 (:func:`win_rates`, :func:`plot_selection`).
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as sps

from alarm.errors import AlarmError
from alarm.evaluation.statistics import win_counts
from alarm.io import write_json_atomic, write_text_atomic

DEFAULT_MAX_CONFLICT = 0.4  # keep the aspects conflicting with the holistic reward on at most 40 % of its decisive pairs

__all__ = [
    "AspectStats",
    "Pairs",
    "Selection",
    "aspect_stats",
    "compute_stats",
    "select_aspects",
    "pair_up",
    "pairs_from_samples",
    "win_rates",
    "selection_to_json",
    "selection_markdown",
    "selection_figure",
    "plot_selection",
]


@dataclass(frozen=True)
class AspectStats:
    """Consistency of one aspect reward with the holistic reward; every rate comes with its counts."""

    conflict: float | None  # n_conflicts / n_holistic_decisive (the paper's rate)
    agreement: float | None  # n_agreements / n_both_decisive
    tie_rate: float | None  # n_aspect_ties / n_pairs
    kendall_tau_b: float | None  # over single responses (both responses of every pair pooled)
    spearman_rho: float | None
    n_pairs: int  # pairs used (after dropping pairs where the aspect does not apply)
    n_dropped: int  # pairs where m_a or m_b was None / NaN
    n_holistic_decisive: int  # H != 0
    n_both_decisive: int  # H != 0 and M != 0
    n_conflicts: int  # H != 0, M != 0, M != H
    n_agreements: int  # H == M != 0
    n_aspect_ties: int  # M == 0, over all n_pairs
    higher_is_better: bool = True
    tie_tol: float = 0.0

    @property
    def decisive_rate(self) -> float | None:
        """Share of pairs where the aspect prefers one response (1 − tie rate)."""
        return None if self.tie_rate is None else 1.0 - self.tie_rate


@dataclass(frozen=True)
class Selection:
    """Which aspects were kept, which dropped, and one sentence per aspect saying why, with the numbers."""

    kept: list[str]
    dropped: list[str]
    reasons: dict[str, str]
    max_conflict: float | None = None
    top_k: int | None = None
    min_decisive: float = 0.0
    order: list[str] = field(default_factory=list)  # every aspect, by (conflict, name); undefined last

    @property
    def rule(self) -> str:
        if self.max_conflict is not None:
            return f"conflict ≤ {self.max_conflict:.2f}"
        return f"the {self.top_k} lowest conflict rates"


# ---------------------------------------------------------------------------------------------------------
# Statistics


def _to_floats(values: Sequence[Any], what: str) -> np.ndarray:
    """None -> NaN; anything that is not a number is a user error, not a crash."""
    out = np.empty(len(values), dtype=float)
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise AlarmError(
                f"{what}[{i}] is {v!r}; scores must be numbers (or None where the aspect does not apply)"
            )
        out[i] = float(v)
    if np.isinf(out).any():
        i = int(np.flatnonzero(np.isinf(out))[0])
        raise AlarmError(
            f"{what}[{i}] is infinite; scores must be finite numbers (or None where the aspect does not apply)"
        )
    return out


def _sign(diff: np.ndarray, tie_tol: float) -> np.ndarray:
    """-1, 0, +1 with |diff| ≤ tie_tol counted as a tie (tie_tol = 0: exact ties only)."""
    return np.where(np.abs(diff) <= tie_tol, 0, np.sign(diff)).astype(int)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def _rank_corr(fn, x: np.ndarray, y: np.ndarray) -> float | None:
    """scipy correlation, or None where it is undefined (fewer than two points, a constant side)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(x, y)[0])
    return None if math.isnan(value) else value


def _check_tie_tol(tie_tol: float) -> None:
    if not isinstance(tie_tol, (int, float)) or math.isnan(tie_tol) or tie_tol < 0:
        raise AlarmError(f"tie_tol must be a number ≥ 0, got {tie_tol!r}")


def _check_holistic(h_a: Sequence[Any], h_b: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    if len(h_a) != len(h_b):
        raise AlarmError(f"h_a and h_b must have the same length (got {len(h_a)} and {len(h_b)})")
    if len(h_a) == 0:
        raise AlarmError("no pairs given: reward selection needs at least one pair of responses")
    ha, hb = _to_floats(h_a, "h_a"), _to_floats(h_b, "h_b")
    for name, h in (("h_a", ha), ("h_b", hb)):
        if np.isnan(h).any():
            i = int(np.flatnonzero(np.isnan(h))[0])
            raise AlarmError(f"{name}[{i}] is missing or NaN; every pair needs both holistic scores")
    return ha, hb


def aspect_stats(
    h_a: Sequence[float],
    h_b: Sequence[float],
    m_a: Sequence[float | None],
    m_b: Sequence[float | None],
    higher_is_better: bool = True,
    tie_tol: float = 0.0,
) -> AspectStats:
    """Consistency of one aspect (m) with the holistic reward (h) over paired responses.

    Pairs where either aspect score is None / NaN are dropped for this aspect and counted in ``n_dropped``.
    ``tie_tol`` applies to both H and M; the rank correlations use the raw scores (scipy handles ties).
    """
    _check_tie_tol(tie_tol)
    ha, hb = _check_holistic(h_a, h_b)
    if not (len(m_a) == len(m_b) == len(ha)):
        raise AlarmError(
            f"h_a, h_b, m_a, m_b must have the same length (got {len(ha)}, {len(hb)}, {len(m_a)}, {len(m_b)})"
        )
    ma, mb = _to_floats(m_a, "m_a"), _to_floats(m_b, "m_b")
    if not higher_is_better:  # orient so that "higher" means "better" for every comparison below
        ma, mb = -ma, -mb

    keep = ~(np.isnan(ma) | np.isnan(mb))
    ha, hb, ma, mb = ha[keep], hb[keep], ma[keep], mb[keep]
    H = _sign(ha - hb, tie_tol)
    M = _sign(ma - mb, tie_tol)

    n_pairs = int(keep.sum())
    holistic_decisive = H != 0
    both_decisive = holistic_decisive & (M != 0)
    n_hd = int(holistic_decisive.sum())
    n_bd = int(both_decisive.sum())
    n_conflicts = int((both_decisive & (M != H)).sum())
    n_agreements = n_bd - n_conflicts
    n_ties = int((M == 0).sum())

    h_single = np.concatenate([ha, hb])
    m_single = np.concatenate([ma, mb])
    return AspectStats(
        conflict=_ratio(n_conflicts, n_hd),
        agreement=_ratio(n_agreements, n_bd),
        tie_rate=_ratio(n_ties, n_pairs),
        kendall_tau_b=_rank_corr(lambda x, y: sps.kendalltau(x, y, variant="b"), m_single, h_single),
        spearman_rho=_rank_corr(sps.spearmanr, m_single, h_single),
        n_pairs=n_pairs,
        n_dropped=int((~keep).sum()),
        n_holistic_decisive=n_hd,
        n_both_decisive=n_bd,
        n_conflicts=n_conflicts,
        n_agreements=n_agreements,
        n_aspect_ties=n_ties,
        higher_is_better=bool(higher_is_better),
        tie_tol=float(tie_tol),
    )


class Pairs(NamedTuple):
    """Paired scores, the output of :func:`pair_up`: pair i is (side a, side b) of one prompt."""

    h_a: Sequence[float]  # the holistic reward of each pair's two sides
    h_b: Sequence[float]
    m_a: Mapping[str, Sequence[float | None]]  # every aspect's scores of each pair's two sides
    m_b: Mapping[str, Sequence[float | None]]


def _directions(pairs: Pairs, higher_is_better: Mapping[str, bool] | None) -> dict[str, bool]:
    """``higher_is_better`` checked against the aspects of ``pairs``."""
    m_a, m_b = pairs.m_a, pairs.m_b
    if set(m_a) != set(m_b):
        raise AlarmError(f"m_a and m_b name different aspects: {sorted(set(m_a) ^ set(m_b))}")
    if not m_a:
        raise AlarmError("no aspects given: pass at least one aspect's scores")
    directions = dict(higher_is_better or {})
    unknown = sorted(set(directions) - set(m_a))
    if unknown:
        raise AlarmError(f"higher_is_better names aspects without scores: {unknown} (known: {sorted(m_a)})")
    return directions


def compute_stats(pairs: Pairs, higher_is_better: Mapping[str, bool] | None = None,
                  tie_tol: float = 0.0) -> dict[str, AspectStats]:
    """:func:`aspect_stats` for every aspect of ``pairs`` (e.g. the output of :func:`pair_up`), keyed by aspect
    name."""
    h_a, h_b, m_a, m_b = pairs
    directions = _directions(pairs, higher_is_better)
    return {
        name: aspect_stats(h_a, h_b, m_a[name], m_b[name], directions.get(name, True), tie_tol)
        for name in sorted(m_a)
    }


# ---------------------------------------------------------------------------------------------------------
# Selection


def _fmt(value: float | None, s: AspectStats) -> str:
    if value is not None:
        return f"{value:.2f}"
    return "undefined (no pairs)" if s.n_pairs == 0 else "undefined (all ties)"


def _conflict_counts(s: AspectStats) -> str:
    return f"({s.n_conflicts}/{s.n_holistic_decisive} holistic-decisive pairs)"


def _details(s: AspectStats) -> str:
    return f"agreement {_fmt(s.agreement, s)}, τ-b {_fmt(s.kendall_tau_b, s)}"


def _order_key(item: tuple[str, AspectStats]) -> tuple[bool, float, str]:
    name, s = item
    return (s.conflict is None, s.conflict if s.conflict is not None else 0.0, name)


def select_aspects(
    stats: Mapping[str, AspectStats],
    max_conflict: float | None = None,
    top_k: int | None = None,
    min_decisive: float = 0.0,
) -> Selection:
    """Keep the aspects that conflict least with the holistic reward: conflict ≤ ``max_conflict``, or the
    ``top_k`` lowest. An aspect deciding fewer than ``min_decisive`` of its pairs is dropped whatever its
    conflict, because ties never count as conflicts (docs/method.md §2.3). Ties in conflict are broken by name.
    """
    if (max_conflict is None) == (top_k is None):
        raise AlarmError("give exactly one selection rule: max_conflict=<rate in [0, 1]> or top_k=<count>")
    if max_conflict is not None and not (0.0 <= max_conflict <= 1.0):
        raise AlarmError(f"max_conflict must be in [0, 1], got {max_conflict}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise AlarmError(f"top_k must be a whole number ≥ 1, got {top_k!r}")
    if not (0.0 <= min_decisive <= 1.0):
        raise AlarmError(f"min_decisive must be in [0, 1], got {min_decisive}")
    if not stats:
        raise AlarmError("no aspects to select from: compute aspect statistics first")

    ordered = sorted(stats.items(), key=_order_key)
    reasons: dict[str, str] = {}
    candidates: list[str] = []  # defined conflict and decisive enough, in (conflict, name) order
    for name, s in ordered:
        if s.conflict is None:
            reasons[name] = f"dropped: conflict {_fmt(None, s)}: no holistic-decisive pairs among {s.n_pairs}"
        elif s.decisive_rate is not None and s.decisive_rate < min_decisive:
            reasons[name] = (
                f"dropped: ties in {s.tie_rate:.0%} of pairs ({s.n_aspect_ties}/{s.n_pairs}), "
                f"decisive rate {s.decisive_rate:.2f} < {min_decisive:.2f}, "
                f"although conflict is {s.conflict:.2f} {_conflict_counts(s)}"
            )
        else:
            candidates.append(name)

    kept: list[str] = []
    for rank, name in enumerate(candidates, start=1):
        s = stats[name]
        if max_conflict is not None:
            ok = s.conflict <= max_conflict
            rule = f"{s.conflict:.2f} {'≤' if ok else '>'} {max_conflict:.2f}"
        else:
            ok = rank <= top_k
            rule = f"{s.conflict:.2f}, rank {rank} of {len(candidates)} " + (
                f"(top {top_k})" if ok else f"(not in the top {top_k})"
            )
        reasons[name] = f"{'kept' if ok else 'dropped'}: conflict {rule} {_conflict_counts(s)}, {_details(s)}"
        if ok:
            kept.append(name)

    order = [name for name, _ in ordered]
    return Selection(
        kept=kept,
        dropped=[name for name in order if name not in kept],
        reasons=reasons,
        max_conflict=max_conflict,
        top_k=top_k,
        min_decisive=min_decisive,
        order=order,
    )


# ---------------------------------------------------------------------------------------------------------
# Building pairs


def pair_up(
    scores_a: Mapping[Any, Mapping[str, float | None]],
    scores_b: Mapping[Any, Mapping[str, float | None]],
    holistic: str = "holistic",
    aspects: Sequence[str] | None = None,
) -> Pairs:
    """Align two sides (two systems, or sample 1 / sample 2 of one policy) by prompt id.

    Returns ``(h_a, h_b, m_a, m_b)`` with ``m_*[aspect][i]``, in the prompt order of ``scores_a``. A prompt on
    only one side is an error (nothing is silently lost); an aspect missing from a prompt's scores is None
    (does not apply), so it is counted as dropped by :func:`aspect_stats`.
    """
    only_a = [p for p in scores_a if p not in scores_b]
    only_b = [p for p in scores_b if p not in scores_a]
    if only_a or only_b:
        example = (only_a or only_b)[0]
        raise AlarmError(
            f"{len(only_a)} prompt id(s) only in side a and {len(only_b)} only in side b "
            f"(e.g. {example!r}); both sides must score the same prompts"
        )
    if not scores_a:
        raise AlarmError("no prompts given: both sides are empty")
    for side, scores in (("a", scores_a), ("b", scores_b)):
        missing = [p for p, s in scores.items() if s.get(holistic) is None]
        if missing:
            raise AlarmError(
                f"{len(missing)} prompt(s) on side {side} lack the holistic score {holistic!r} (e.g. {missing[0]!r})"
            )
    seen = sorted({k for s in [*scores_a.values(), *scores_b.values()] for k in s} - {holistic})
    if aspects is None:
        aspects = seen
    unknown = [a for a in aspects if a not in seen]
    if unknown:
        raise AlarmError(f"aspect(s) {unknown} appear in no scores (known: {seen})")
    if not aspects:
        raise AlarmError(f"no aspect scores found besides the holistic score {holistic!r}")

    prompts = list(scores_a)
    h_a = [scores_a[p][holistic] for p in prompts]
    h_b = [scores_b[p][holistic] for p in prompts]
    m_a = {k: [scores_a[p].get(k) for p in prompts] for k in aspects}
    m_b = {k: [scores_b[p].get(k) for p in prompts] for k in aspects}
    return Pairs(h_a, h_b, m_a, m_b)


def _is_score(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def pairs_from_samples(
    records: Sequence[Mapping[str, Any]],
    holistic: str = "holistic",
    aspects: Sequence[str] | None = None,
    prompt_key: str = "prompt_id",
) -> Pairs:
    """Pairs from exactly two scored samples per prompt (records in any order; the first seen is side a).

    Without ``aspects``, every numeric (or None) field other than the prompt id and holistic score is an
    aspect, so text fields such as the response can stay in the records.
    """
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for i, r in enumerate(records):
        if prompt_key not in r:
            raise AlarmError(f"record {i} has no {prompt_key!r} field; every sample needs its prompt id")
        groups.setdefault(r[prompt_key], []).append(r)
    wrong = {p: len(g) for p, g in groups.items() if len(g) != 2}
    if wrong:
        example, count = next(iter(wrong.items()))
        raise AlarmError(
            f"{len(wrong)} prompt(s) do not have exactly two samples (e.g. {example!r} has {count}); "
            "pair_up two systems instead, or keep two samples per prompt"
        )
    if aspects is None:
        names = {k for r in records for k in r} - {prompt_key, holistic}
        aspects = sorted(k for k in names if all(_is_score(r.get(k)) for r in records))

    def scores(r: Mapping[str, Any]) -> dict[str, Any]:
        return {k: r.get(k) for k in [holistic, *aspects]}

    scores_a = {p: scores(g[0]) for p, g in groups.items()}
    scores_b = {p: scores(g[1]) for p, g in groups.items()}
    return pair_up(scores_a, scores_b, holistic=holistic, aspects=aspects)


def win_rates(pairs: Pairs, higher_is_better: Mapping[str, bool] | None = None, tie_tol: float = 0.0,
              holistic: str = "holistic") -> dict[str, dict]:
    """Side a's win rate over side b by the holistic reward (first) and by every aspect: with greedy outputs as
    side a, the paper's greedy-vs-sampling win rates. Each is :class:`alarm.evaluation.compare.WinCounts` as a
    dict: ``win_rate_pct`` = 100·wins / (wins + losses) with its bootstrap interval over pairs, and the counts."""

    _check_tie_tol(tie_tol)
    h_a, h_b, m_a, m_b = pairs
    directions = _directions(pairs, higher_is_better)
    out = {holistic: asdict(win_counts(list(h_a), list(h_b), True, tie_tol))}
    for name in sorted(m_a):
        out[name] = asdict(win_counts(list(m_a[name]), list(m_b[name]), directions.get(name, True), tie_tol))
    return out


# ---------------------------------------------------------------------------------------------------------
# Reports


def run_selection(pairs: tuple, out_dir: str | Path, *, higher_is_better: Mapping[str, bool] | None = None,
                  tie_tol: float = 0.0, holistic: str = "holistic", sides: tuple[str, str] = ("a", "b"),
                  max_conflict: float | None = DEFAULT_MAX_CONFLICT, top_k: int | None = None,
                  min_decisive: float = 0.0, header: str = "", footer: str = "",
                  extra: Mapping[str, Any] | None = None) -> tuple[dict[str, AspectStats], Selection, dict]:
    """The reward selection on paired scores ``pairs`` = ``(h_a, h_b, m_a, m_b)`` (:func:`pair_up`): every
    aspect's statistics, the win rates, the kept aspects, written to ``out_dir``/selection.{json,md,png}
    (``extra`` keys first in the JSON; ``header`` and ``footer`` around the Markdown table). The one runner of
    `alarm select` and `alarm run`'s select step."""
    pairs = Pairs(*pairs)
    stats = compute_stats(pairs, higher_is_better, tie_tol)
    wins = win_rates(pairs, higher_is_better, tie_tol, holistic=holistic)
    selection = select_aspects(stats, max_conflict=max_conflict, top_k=top_k, min_decisive=min_decisive)
    out = Path(out_dir)
    write_json_atomic(out / "selection.json", {**(extra or {}), "n_pairs": len(pairs.h_a),
                                               **selection_to_json(stats, selection, wins, sides)})
    write_text_atomic(out / "selection.md", header + selection_markdown(stats, selection, wins, sides) + footer)
    plot_selection(stats, selection, out / "selection.png", wins, sides)
    return stats, selection, wins


def selection_to_json(stats: Mapping[str, AspectStats], selection: Selection, wins: Mapping[str, dict] | None = None,
                      sides: tuple[str, str] = ("a", "b")) -> dict:
    """A JSON-ready record of the rule, the decision and every aspect's numbers (None stays null); with
    :func:`win_rates`, each aspect's and the holistic reward's win rate of side a over side b."""
    aspects = {}
    for name in selection.order:
        s = stats[name]
        aspects[name] = {
            **asdict(s),
            "decisive_rate": s.decisive_rate,
            **({"win_rate": wins[name]} if wins else {}),
            "kept": name in selection.kept,
            "reason": selection.reasons[name],
        }
    out = {
        "rule": {
            "max_conflict": selection.max_conflict,
            "top_k": selection.top_k,
            "min_decisive": selection.min_decisive,
        },
        "kept": list(selection.kept),
        "dropped": list(selection.dropped),
        "aspects": aspects,
    }
    if wins:
        holistic = next(k for k in wins if k not in stats)
        out["sides"] = list(sides)
        out["holistic_win_rate"] = wins[holistic]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _fmt_win(w: Mapping[str, Any]) -> str:
    """'73.7 [65.0, 81.2] (95: 70–25)': the paper's win rate, its interval, the decisive pairs (wins–losses)."""
    interval = "" if w.get("pct_low") is None else f" [{w['pct_low']:.1f}, {w['pct_high']:.1f}]"
    return f"{w['win_rate_pct']:.1f}{interval} ({w['wins'] + w['losses']}: {w['wins']}–{w['losses']})"


def selection_markdown(stats: Mapping[str, AspectStats], selection: Selection, wins: Mapping[str, dict] | None = None,
                       sides: tuple[str, str] = ("a", "b")) -> str:
    """A Markdown table of every aspect's numbers and why it was kept or dropped; with :func:`win_rates`, a
    column of side a's win rate over side b and the holistic reward's own as the reference line."""
    guard = f"; decisive rate ≥ {selection.min_decisive:.2f}" if selection.min_decisive > 0 else ""
    versus = f"{sides[0]}-vs-{sides[1]} win rate"
    lines = [f"Reward selection: keep {selection.rule}{guard}. Kept: {', '.join(selection.kept) or 'none'}.", ""]
    if wins:
        holistic = next(k for k in wins if k not in stats)
        lines += [f"Holistic reward ({holistic}) {versus}, the reference: {_fmt_win(wins[holistic])}. Win rates are "
                  "100·wins / (wins + losses) with a 95 % bootstrap interval over pairs (decisive pairs: wins–losses).",
                  ""]
    head = ["aspect", "conflict", *([versus] if wins else []), "agreement", "tie rate", "τ-b", "Spearman ρ", "pairs",
            "kept", "reason"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in selection.order:
        s = stats[name]
        pairs = f"{s.n_pairs}" + (f" ({s.n_dropped} dropped)" if s.n_dropped else "")
        cells = [
            name,
            _fmt(s.conflict, s),
            *([_fmt_win(wins[name])] if wins else []),
            _fmt(s.agreement, s),
            _fmt(s.tie_rate, s),
            _fmt(s.kendall_tau_b, s),
            _fmt(s.spearman_rho, s),
            pairs,
            "yes" if name in selection.kept else "no",
            selection.reasons[name],
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_selection(stats: Mapping[str, AspectStats], selection: Selection, path: str | Path,
                   wins: Mapping[str, dict] | None = None, sides: tuple[str, str] = ("a", "b")) -> Path:
    """Write :func:`selection_figure` as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    selection_figure(stats, selection, wins, sides).savefig(path, format="png", dpi=100)
    return path


def selection_figure(stats: Mapping[str, AspectStats], selection: Selection, wins: Mapping[str, dict] | None = None,
                     sides: tuple[str, str] = ("a", "b")):
    """The layout of the paper's Figures 3–4: per aspect, the inconsistency with the holistic reward (conflict,
    %) and, with :func:`win_rates`, side a's win rate over side b (%), the holistic reward's own win rate as a
    dashed reference line; the threshold as a dotted line; kept aspects in bold. Without win rates the second
    bar is the tie rate.

    Uses matplotlib's Agg canvas directly, so it never touches the global pyplot backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = selection.order
    x = np.arange(len(names))
    conflict = [100 * (stats[n].conflict or 0.0) for n in names]
    if wins:
        second = [wins[n]["win_rate_pct"] for n in names]
        second_label = f"{sides[0]}-vs-{sides[1]} win rate"
    else:
        second, second_label = [100 * (stats[n].tie_rate or 0.0) for n in names], "tie rate"

    fig = Figure(figsize=(max(5.5, 1.3 * len(names) + 2.5), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.38
    bars = ax.bar(x - width / 2, conflict, width, label="inconsistency with holistic", color="tab:red")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    bars = ax.bar(x + width / 2, second, width, label=second_label, color="tab:blue" if wins else "tab:gray")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    for i, n in enumerate(names):
        if stats[n].conflict is None:
            ax.text(i - width / 2, 1, "n/a", ha="center", va="bottom", fontsize=7)
    if wins:
        holistic = next(k for k in wins if k not in stats)
        h = wins[holistic]["win_rate_pct"]
        ax.axhline(h, color="tab:blue", linestyle="--", linewidth=1.2, label=f"{holistic} win rate {h:.1f}")
    if selection.max_conflict is not None:
        ax.axhline(100 * selection.max_conflict, color="black", linestyle=":", linewidth=1,
                   label=f"max conflict {100 * selection.max_conflict:.0f}")
    if selection.min_decisive > 0 and not wins:
        ax.axhline(100 * (1 - selection.min_decisive), color="tab:gray", linestyle="-.", linewidth=1,
                   label=f"max tie rate {100 * (1 - selection.min_decisive):.0f}")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right")
    for label, n in zip(ax.get_xticklabels(), names):
        if n in selection.kept:
            label.set_fontweight("bold")
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    # the title wrapped to the figure's width, the legend below the axes: neither is cut off or covers a bar
    title = f"Reward selection on {sides[0]}-vs-{sides[1]} pairs (kept in bold): {selection.rule}"
    ax.set_title("\n".join(textwrap.wrap(title, width=int(fig.get_figwidth() * 13))), fontsize=9)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncols=2, frameon=False)
    return fig
