"""The comparison's report: Markdown tables (means, the paper's win-rate matrices with intervals, paired
differences) and PNG plots, from the result of :func:`alarm.evaluation.compare.compare_systems`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alarm.evaluation.plots import plot_win_rate_heatmaps


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
