"""Compare systems on the same prompts: align their scored records by prompt id, per-metric means with
confidence intervals, pairwise win rates and paired differences by every reward, an optional LLM judge, and the
report (JSON + Markdown + PNG). The statistics are :mod:`alarm.evaluation.statistics`, the Markdown and plots
:mod:`alarm.evaluation.report`; their public names are importable from here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from alarm.errors import AlarmError
from alarm.evaluation.judge import OUTCOME_SIGN, summarize_outcomes
from alarm.evaluation.report import format_difference as format_difference
from alarm.evaluation.report import matrix_markdown as matrix_markdown
from alarm.evaluation.report import plot_means as plot_means
from alarm.evaluation.report import plot_win_rates as plot_win_rates
from alarm.evaluation.report import report_markdown as report_markdown
from alarm.evaluation.report import summary_markdown as summary_markdown
from alarm.evaluation.statistics import MeanCI as MeanCI
from alarm.evaluation.statistics import WinCounts as WinCounts
from alarm.evaluation.statistics import check_bootstrap, outcome_signs
from alarm.evaluation.statistics import mean_ci as mean_ci
from alarm.evaluation.statistics import other_side as other_side
from alarm.evaluation.statistics import paired_difference as paired_difference
from alarm.evaluation.statistics import paper_win_rate as paper_win_rate
from alarm.evaluation.statistics import wilson_interval as wilson_interval
from alarm.evaluation.statistics import win_counts as win_counts
from alarm.evaluation.statistics import win_rate_interval as win_rate_interval
from alarm.evaluation.statistics import win_rate_matrix as win_rate_matrix
from alarm.io import write_json_atomic


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
    check_bootstrap(n_boot, confidence)
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
    matrices = {m: win_rate_matrix(systems, {(x, y): outcome_signs(_metric_values(al, x, m), _metric_values(al, y, m),
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


def compare_scored(systems: Mapping[str, Sequence[Mapping[str, Any]]], directions: Mapping[str, bool],
                   out: str | Path, metrics: Sequence[str] | None = None, method: str = "bootstrap",
                   confidence: float = 0.95, tie_tol: float = 0.0, n_boot: int = 2000, seed: int = 0,
                   sample: int = 0, allow_missing: bool = False, judge=None, judge_max_prompts: int | None = None,
                   files: Mapping[str, str] | None = None, progress: bool = False, info=None,
                   clusters: Mapping[str, str] | None = None, judge_pairs_with: str | None = None):
    """`alarm compare` as a function: scored records per system → ``compare.json``, ``report.md`` and plots in
    ``out`` (a run's own evaluation calls it too). Returns ``(result, judge_result, plots)``."""
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
