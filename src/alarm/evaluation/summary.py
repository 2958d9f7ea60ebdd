"""What a run's evaluation says in plain words: the headline numbers of trained vs initial (paired difference,
win rate with its ties, the aspects, the length change and a length control), example answers side by side,
and their text for an 80-column terminal and for report.md.

Definitions:
- **paired difference**: trained − initial of a metric question by question, averaged, with a percentile
  bootstrap interval over the questions (:func:`alarm.evaluation.compare.win_counts`, seeded);
- **win rate**: 100·wins / (wins + losses) of trained over initial, ties counted beside it;
- **length change**: the paired difference of the answer length in words, and relative to the initial mean;
- **length control**: the paired difference of the holistic metric over the questions whose answer length
  changed by less than ``max_relative_change`` (|trained − initial| / max(initial, 1) words), so a gain that
  comes from longer answers (each extra sentence earning per-sentence aspect rewards) shows up as one that
  vanishes here.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alarm.evaluation.compare import paired_difference, win_counts

__all__ = ["per_question", "headline", "pick_examples", "answers_text", "summary_lines", "side_by_side",
           "examples_markdown", "shown_aspects",
           "difference_rows", "verdict"]

LENGTH = "length_words"


def _by_prompt(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(r["prompt_id"]): r for r in rows if int(r.get("sample", 0)) == 0}


def _score(row: Mapping[str, Any], metric: str) -> float | None:
    v = (row.get("scores") or {}).get(metric)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def per_question(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per question from several sampled answers each: every score averaged over the question's samples
    (None and NaN skipped; None when no sample has it), the first sample's text and columns beside them, and
    ``samples`` (how many were averaged). A question answered once passes through as it is, with ``samples`` 1."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r["prompt_id"]), []).append(r)
    out = []
    for group in groups.values():
        group = sorted(group, key=lambda r: int(r.get("sample", 0)))
        keys = list(dict.fromkeys(k for r in group for k in (r.get("scores") or {})))
        scores = {}
        for k in keys:
            vals = [v for v in (_score(r, k) for r in group) if v is not None]
            scores[k] = float(np.mean(vals)) if vals else None
        out.append({**group[0], "sample": 0, "scores": scores, "samples": len(group)})
    return out


def _interval(mean, low, high) -> dict[str, float | None]:
    return {"mean": mean, "low": low, "high": high}


def shown_aspects(metrics: Sequence[str], holistic: str) -> list[str]:
    """The one metric per aspect reward a reader is shown: a dense reward's share of positive values (e.g. the
    share of sentences judged grounded), else its z-normalised value, else its raw value; the holistic reward
    and the length are left out."""
    base = holistic.split(".")[0]
    by_reward: dict[str, list[str]] = {}
    for m in metrics:
        name = m.split(".")[0]
        if name not in (base, LENGTH):
            by_reward.setdefault(name, []).append(m)
    out = []
    for name, ms in by_reward.items():
        for choice in (f"{name}.share_positive", f"{name}.z", name):
            if choice in ms:
                out.append(choice)
                break
    return out


def headline(initial: Sequence[Mapping[str, Any]], trained: Sequence[Mapping[str, Any]], metric: str,
             aspects: Sequence[str] = (), max_relative_change: float = 0.2, n_boot: int = 2000, seed: int = 0,
             confidence: float = 0.95) -> dict[str, Any]:
    """The numbers a reader needs first, from scored records (``prompt_id``, ``completion``, ``scores``) of both
    policies on the same questions; JSON-ready. Keys: ``metric``, ``n_prompts``, ``confidence``, ``means``
    ({initial, trained}), ``paired_difference`` ({mean, low, high}), ``win_rate`` ({pct, low, high, wins,
    losses, ties}), ``aspects`` ({name: {mean, low, high}}), ``length_change`` ({initial_words,
    trained_words, mean, low, high, relative, relative_low, relative_high}; mean/low/high in words, relative
    ones as fractions of the initial mean) and ``length_controlled`` ({max_relative_change, n, mean, low,
    high}). Every interval comes from the same resampled questions (one ``seed``)."""
    a, b = _by_prompt(initial), _by_prompt(trained)
    ids = [p for p in a if p in b]
    kw = {"n_boot": n_boot, "seed": seed, "confidence": confidence}

    def values(side, m):
        return [_score(side[p], m) for p in ids]

    def mean(xs):
        kept = [x for x in xs if x is not None]
        return float(np.mean(kept)) if kept else None

    h_t, h_i = values(b, metric), values(a, metric)
    w = win_counts(h_t, h_i, **kw)
    out: dict[str, Any] = {
        "metric": metric, "n_prompts": len(ids), "confidence": confidence,
        "means": {"initial": mean(h_i), "trained": mean(h_t)},
        "paired_difference": _interval(w.mean_diff, w.diff_low, w.diff_high),
        "win_rate": {"pct": w.win_rate_pct, "low": w.pct_low, "high": w.pct_high, "wins": w.wins,
                     "losses": w.losses, "ties": w.ties},
        "aspects": {m: _interval(*paired_difference(values(b, m), values(a, m), **kw)) for m in aspects},
    }
    def words(row):  # the scored length (a mean over samples for per_question rows), else the text's
        n = _score(row, LENGTH)
        return n if n is not None else float(len(str(row.get("completion", "")).split()))

    words_i, words_t = [words(a[p]) for p in ids], [words(b[p]) for p in ids]
    d_mean, d_low, d_high = paired_difference(words_t, words_i, **kw)
    base = mean(words_i) or 0.0

    def rel(v):
        return None if v is None or base <= 0 else v / base

    out["length_change"] = {"initial_words": mean(words_i), "trained_words": mean(words_t), "mean": d_mean,
                            "low": d_low, "high": d_high, "relative": rel(d_mean), "relative_low": rel(d_low),
                            "relative_high": rel(d_high)}
    steady = [abs(t - i) / max(i, 1.0) < max_relative_change for i, t in zip(words_i, words_t)]
    c_mean, c_low, c_high = paired_difference([x if k else None for x, k in zip(h_t, steady)], h_i, **kw)
    out["length_controlled"] = {"max_relative_change": max_relative_change,
                                "n": sum(1 for k, x, y in zip(steady, h_t, h_i) if k and x is not None and y is not None),
                                **_interval(c_mean, c_low, c_high)}
    return out


def difference_rows(head: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of :func:`alarm.evaluation.plots.plot_paired_differences` for a headline: the holistic metric
    and the aspects on the reward axis, the length change in % on its own axis."""
    rows = [{"label": head["metric"], "panel": "reward difference", **head["paired_difference"]}]
    rows += [{"label": m, "panel": "reward difference", **d} for m, d in head["aspects"].items()]
    lc = head["length_controlled"]
    rows.append({"label": f"{head['metric']}, length within ±{lc['max_relative_change']:.0%} (n={lc['n']})",
                 "panel": "reward difference", "mean": lc["mean"], "low": lc["low"], "high": lc["high"]})
    ln = head["length_change"]
    pct = {k: None if ln[f"relative{s}"] is None else 100 * ln[f"relative{s}"]
           for k, s in (("mean", ""), ("low", "_low"), ("high", "_high"))}
    rows.append({"label": "answer length", "panel": "length change, % of the initial mean", **pct})
    return rows


def verdict(d: Mapping[str, Any]) -> str:
    """In words: where a paired difference's interval lies."""
    if d.get("low") is None:
        return "no interval"
    if d["low"] > 0:
        return "higher"
    if d["high"] < 0:
        return "lower"
    return "no clear change"


def _d(d: Mapping[str, Any], digits: int = 3) -> str:
    if d.get("mean") is None:
        return "n/a"
    if d.get("low") is None:
        return f"{d['mean']:+.{digits}f}"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def answers_text(samples: int, temperature: float = 1.0) -> str:
    """What the evaluated answers are, in words (``samples`` 0 or 1 unsampled: greedy)."""
    if samples <= 0:
        return "greedy answers"
    return f"the mean over {samples} sampled answer{'s' if samples != 1 else ''} (T {temperature:g}) per question"


def summary_lines(head: Mapping[str, Any], width: int = 80, described: str | None = None) -> list[str]:
    """The result in plain words, each line at most ``width`` characters: the holistic metric trained vs
    initial with the paired difference, the win rate with its ties, the aspects, the length change and the
    length control. ``described``: what the holistic metric is (e.g. "similarity to the reference answer");
    ``head["answers"]`` (optional): what the answers are (:func:`answers_text`; default greedy answers)."""
    m, d, w = head["metric"], head["paired_difference"], head["win_rate"]
    ci = f"{head['confidence']:.0%}"
    what = f"{m}, {described}" if described else m
    side = {"higher": "the trained policy scores higher", "lower": "the trained policy scores lower",
            "no clear change": "no clear change (the interval includes 0)", "no interval": "too few questions "
            "for an interval"}[verdict(d)]
    decided = w["wins"] + w["losses"]
    wr = "n/a" if w["low"] is None else f"{w['pct']:.1f}% [{w['low']:.1f}, {w['high']:.1f}]"
    paras = [
        f"Result on {head['n_prompts']} test question{'s' if head['n_prompts'] != 1 else ''}, "
        f"{head.get('answers', 'greedy answers')} of the initial and the trained policy "
        f"(intervals: {ci}, bootstrap over questions):",
        f"- Holistic reward ({what}): initial {_f(head['means']['initial'])}, trained "
        f"{_f(head['means']['trained'])}; paired difference {_d(d)}: {side}.",
        f"- Question by question: trained better on {w['wins']}, initial on {w['losses']}, {w['ties']} ties; "
        f"win rate {wr} of the {decided} decided.",
    ]
    if head["aspects"]:
        shares = any(name.endswith(".share_positive") for name in head["aspects"])
        paras.append("- Aspects (trained − initial): " + ", ".join(
            f"{name} {_d(x)} ({verdict(x)})" for name, x in head["aspects"].items()) + "."
            + (" share_positive: the share of an answer's sentences (or spans) the aspect rewards." if shares
               else ""))
    ln = head["length_change"]
    if ln["initial_words"] is not None:
        rel = "" if ln["relative"] is None else f", {100 * ln['relative']:+.0f}%"
        paras.append(f"- Length: {ln['initial_words']:.1f} → {ln['trained_words']:.1f} words per answer, "
                     f"{_d(ln, 1)} words{rel}; holistic {_d(d)} beside it.")
    lc = head["length_controlled"]
    if lc["mean"] is None:
        tail = "none of them kept its length"
    else:
        tail = {"higher": "the gain holds without longer answers",
                "lower": "there the trained policy scores lower",
                "no clear change": "no clear change there",
                "no interval": "too few for an interval"}[verdict(lc)]
    paras.append(f"- Length control: on the {lc['n']} questions whose answer length changed by less than "
                 f"{lc['max_relative_change']:.0%}, the holistic difference is {_d(lc)}: {tail}.")
    lines: list[str] = []
    for p in paras:
        lines += textwrap.wrap(p, width=width, subsequent_indent="  " if p.startswith("-") else "",
                               break_long_words=True, break_on_hyphens=False)
    return lines


def pick_examples(initial: Sequence[Mapping[str, Any]], trained: Sequence[Mapping[str, Any]], metric: str,
                  n: int = 3, seed: int = 0, shown: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Questions to read with both answers: the ``n`` largest gains of ``metric`` (trained − initial > 0), the
    ``n`` largest losses (< 0), and ``n`` of the rest drawn with ``seed``. Each: ``{kind, prompt_id,
    question, difference, initial: {completion, scores}, trained: {...}}`` with the scores of ``metric`` and
    ``shown``."""
    a, b = _by_prompt(initial), _by_prompt(trained)
    diffs = []
    for p in a:
        if p in b and _score(b[p], metric) is not None and _score(a[p], metric) is not None:
            diffs.append((p, _score(b[p], metric) - _score(a[p], metric)))
    gains = sorted((x for x in diffs if x[1] > 0), key=lambda x: -x[1])[:n]
    losses = sorted((x for x in diffs if x[1] < 0), key=lambda x: x[1])[:n]
    taken = {p for p, _ in gains + losses}
    rest = [x for x in diffs if x[0] not in taken]
    rng = np.random.default_rng(seed)
    drawn = [rest[i] for i in sorted(rng.choice(len(rest), size=min(n, len(rest)), replace=False))] if rest else []
    keys = [metric, *[k for k in shown if k != metric]]

    def side(r):
        return {"completion": str(r.get("completion", "")), "scores": {k: _score(r, k) for k in keys},
                "samples": int(r.get("samples", 1))}

    out = []
    for kind, items in (("largest gain", gains), ("largest loss", losses), ("at random", drawn)):
        for p, diff in items:
            q = a[p].get("question")
            question = q if isinstance(q, str) and q.strip() else str(a[p].get("prompt", ""))
            question = textwrap.shorten(question, width=300, placeholder=" …")  # a prompt may be a whole document
            out.append({"kind": kind, "prompt_id": p, "question": question, "difference": diff,
                        "initial": side(a[p]), "trained": side(b[p])})
    return out


def _score_text(name: str, v: float | None) -> str:
    if name == LENGTH:
        return "n/a words" if v is None else f"{v:.0f} words"
    if name.endswith(".share_positive"):
        return f"{name.removesuffix('.share_positive')} {'n/a' if v is None else f'{v:.2f}'}"
    return f"{name} {'n/a' if v is None else f'{v:+.2f}'}"


def _scores_text(scores: Mapping[str, float | None]) -> str:
    return ", ".join(_score_text(k, v) for k, v in scores.items())


def side_by_side(example: Mapping[str, Any], width: int = 80, max_lines: int = 8) -> list[str]:
    """An example as text: a heading with the question, then the two answers in columns ``width`` wide
    (``max_lines`` lines each at most, cut with …), each headed by its scores."""
    gap = " │ "
    col = (width - len(gap)) // 2
    metric = next(iter(example["initial"]["scores"]))
    head = textwrap.wrap(f"{example['kind'].capitalize()} ({metric} {example['difference']:+.2f}), "
                         f"question {example['prompt_id']}: {example['question']}", width=width)[:3]
    columns = []
    for name in ("initial", "trained"):
        s = example[name]
        label = name.upper() + (f" (1 of {s['samples']}; scores: their mean)" if s.get("samples", 1) > 1 else "")
        text = textwrap.wrap(f"{label}: " + (" ".join(s["completion"].split()) or "(empty)"), width=col)
        if len(text) > max_lines:
            last = text[max_lines - 1]
            text = text[: max_lines - 1] + [(last[: col - 2] if len(last) > col - 2 else last) + " …"]
        columns.append(textwrap.wrap(_scores_text(s["scores"]), width=col) + text)
    rows = max(len(c) for c in columns)
    body = [f"{(columns[0][i] if i < len(columns[0]) else ''):<{col}}{gap}"
            f"{columns[1][i] if i < len(columns[1]) else ''}".rstrip() for i in range(rows)]
    return [*head, "─" * width, *body]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "(empty)"


def examples_markdown(examples: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per example, the question and a two-column table of both answers with their scores."""
    lines: list[str] = []
    for ex in examples:
        metric = next(iter(ex["initial"]["scores"]))
        k = ex["initial"].get("samples", 1)
        lines += [f"**{ex['kind']}** ({metric} {ex['difference']:+.3f}) — question `{ex['prompt_id']}`: "
                  f"{_cell(ex['question'])}" + (f" (one of {k} sampled answers each; the scores are the mean of "
                                                f"the {k})" if k > 1 else ""), "",
                  f"| initial ({_scores_text(ex['initial']['scores'])}) | trained "
                  f"({_scores_text(ex['trained']['scores'])}) |", "|---|---|",
                  f"| {_cell(ex['initial']['completion'])} | {_cell(ex['trained']['completion'])} |", ""]
    return "\n".join(lines)
