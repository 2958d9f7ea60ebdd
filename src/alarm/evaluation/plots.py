"""The report's plots: paired differences (one row per metric, point and interval, a zero line), training curves
(a moving average over faint raw points) and win-rate matrices as heatmaps (value and interval in each cell).

Each ``plot_*`` function writes a PNG and returns the data it drew (``{"path": ..., ...}``), built before the
drawing and drawn from, so a test can check what a plot shows without reading pixels. Figures use matplotlib's
Agg canvas directly and never touch the global pyplot backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["moving_average", "plot_paired_differences", "plot_training_curves", "plot_win_rate_heatmaps",
           "PPO_PANELS", "VCB_PANELS"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def _number(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


# ---------------------------------------------------------------------------------------------------------
# Paired differences


def _interval_colour(low: float | None, high: float | None) -> str:
    if low is not None and low > 0:
        return "tab:green"
    if high is not None and high < 0:
        return "tab:red"
    return "tab:gray"


def plot_paired_differences(rows: Sequence[Mapping[str, Any]], path: str | Path,
                            title: str = "trained − initial, question by question",
                            confidence: float = 0.95) -> dict[str, Any]:
    """One row per metric: the paired mean difference as a point, its interval as a bar, a zero line.

    ``rows``: ``{"label", "mean", "low", "high", "panel"}``; rows with the same ``panel`` share an axis (e.g.
    "reward" for reward differences and "length, %" for the relative length change, so a length in words
    never sits on a reward axis). Green: the interval above 0; red: below; grey: it includes 0 (or is none).
    Returns ``{"path", "title", "panels": {panel: [rows as drawn]}}``.
    """
    panels: dict[str, list[dict]] = {}
    for r in rows:
        mean = _number(r.get("mean"))
        if mean is None:
            continue
        panels.setdefault(str(r.get("panel", "reward")), []).append(
            {"label": str(r["label"]), "mean": mean, "low": _number(r.get("low")), "high": _number(r.get("high"))})
    sizes = [len(v) for v in panels.values()] or [1]
    fig = _figure(7.5, 1.2 + 0.42 * sum(sizes) + 0.5 * len(sizes))
    axes = fig.subplots(len(sizes), 1, squeeze=False, height_ratios=[n + 1 for n in sizes])[:, 0]
    for ax, (panel, items) in zip(axes, panels.items()):
        y = np.arange(len(items))
        ends = [abs(v) for it in items for v in (it["mean"], it["low"], it["high"]) if v is not None]
        digits = 1 if max(ends) >= 10 else 3
        for i, it in enumerate(items):
            colour = _interval_colour(it["low"], it["high"])
            if it["low"] is not None:
                ax.hlines(i, it["low"], it["high"], color=colour, linewidth=3, alpha=0.6)
            ax.plot([it["mean"]], [i], "o", color=colour, markersize=7)
            text = f"{it['mean']:+.{digits}f}" if it["low"] is None else \
                f"{it['mean']:+.{digits}f} [{it['low']:+.{digits}f}, {it['high']:+.{digits}f}]"
            ax.annotate(text, (it["mean"], i), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
        ax.axvline(0.0, color="black", linewidth=1)
        ax.set_yticks(y, [it["label"] for it in items], fontsize=8)
        ax.set_ylim(len(items) - 0.4, -0.7)  # first row on top, room for the labels above the points
        reach = max(ends) * 1.25 or 1.0
        ax.set_xlim(-reach, reach)
        ax.set_xlabel(panel, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    if not panels:
        axes[0].text(0.5, 0.5, "no paired differences", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(f"{title} ({confidence:.0%} interval; green: above 0, red: below, grey: includes 0)", fontsize=9)
    return {"path": str(_save(fig, path)), "title": title, "panels": panels}


# ---------------------------------------------------------------------------------------------------------
# Training curves


def moving_average(values: Sequence[float | None], window: int) -> list[float | None]:
    """Trailing mean over the last ``window`` values (fewer at the start), missing values (None, NaN) left out;
    None where the window holds no value."""
    if window < 1:
        raise ValueError(f"window must be ≥ 1, got {window}")
    x = [_number(v) for v in values]
    out: list[float | None] = []
    for i in range(len(x)):
        seen = [v for v in x[max(0, i - window + 1): i + 1] if v is not None]
        out.append(sum(seen) / len(seen) if seen else None)
    return out


def default_window(n_steps: int) -> int:
    """About a quarter of the run, at least 1 step and at most 25 (12 steps: 3)."""
    return max(1, min(25, round(n_steps / 4)))


PPO_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rewards (batch means)", ("rewards/*/mean",)),
    ("gate-open rate", ("gate_open_rate",)),
    ("KL to the reference", ("kl",)),
    ("response length (tokens)", ("length/tokens",)),
)
VCB_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("ranking accuracy (train batch)", ("train/ranking_accuracy",)),
    ("β·Δρ (train batch mean)", ("beta_delta_rho/mean",)),
    ("calibration MSE", ("calibration/mse",)),
)


def _keys(history: Sequence[Mapping[str, Any]], pattern: str) -> list[str]:
    if "*" not in pattern:
        return [pattern] if any(pattern in m for m in history) else []
    head, tail = pattern.split("*", 1)
    found: dict[str, None] = {}
    for m in history:
        for k in m:
            if k.startswith(head) and k.endswith(tail) and "/" not in k[len(head): len(k) - len(tail)]:
                found[k] = None
    return list(found)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path,
                         panels: Sequence[tuple[str, Sequence[str]]] = PPO_PANELS,
                         window: int | None = None) -> dict[str, Any]:
    """Side-by-side panels of per-step metrics: each series as faint raw points under its moving average
    (:func:`moving_average`, ``window`` steps; default :func:`default_window`). ``panels``: ``(title, keys)``,
    a key may hold one ``*`` (``rewards/*/mean``: every reward). Panels with no data are left out.

    Returns ``{"path", "window", "panels": {title: {key: {"steps", "raw", "smoothed"}}}}``."""
    rows = [m for m in history if "step" in m]
    drawn: dict[str, dict[str, dict[str, list]]] = {}
    window = window or default_window(len({m["step"] for m in rows}))
    for title, patterns in panels:
        series = {}
        for key in [k for p in patterns for k in _keys(rows, p)]:
            points = [(m["step"], _number(m.get(key))) for m in rows if _number(m.get(key)) is not None]
            if points:
                steps, raw = [s for s, _ in points], [v for _, v in points]
                series[key] = {"steps": steps, "raw": raw, "smoothed": moving_average(raw, window)}
        if series:
            drawn[title] = series
    n = max(1, len(drawn))
    fig = _figure(min(4.0 * n, 16.0), 3.2)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (title, series) in zip(axes, drawn.items()):
        for i, (key, s) in enumerate(series.items()):
            label = key.removeprefix("rewards/").removesuffix("/mean")
            ax.plot(s["steps"], s["raw"], "o", color=f"C{i}", alpha=0.25, markersize=3)
            ax.plot(s["steps"], s["smoothed"], "-", color=f"C{i}", linewidth=1.8, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    if not drawn:
        axes[0].text(0.5, 0.5, "no training metrics", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(f"Training: moving average over {window} step{'s' if window > 1 else ''} (line) over each "
                 "step's value (faint points)", fontsize=9)
    return {"path": str(_save(fig, path)), "window": window, "panels": drawn}


# ---------------------------------------------------------------------------------------------------------
# Win-rate matrices


def _cell_text(c: Mapping[str, Any]) -> str:
    interval = "–" if c.get("pct_low") is None else f"{c['pct_low']:.0f}–{c['pct_high']:.0f}"
    return f"{c['win_rate_pct']:.1f}\n[{interval}]"


def plot_win_rate_heatmaps(matrices: Sequence[tuple[str, Mapping[str, Any]]], path: str | Path,
                           confidence: float = 0.95) -> dict[str, Any]:
    """One heatmap per evaluator (``(title, matrix)`` with a matrix of
    :func:`alarm.evaluation.compare.win_rate_matrix`): cell (row, column) is the row system's win rate over the
    column system, its value and interval written in the cell, coloured from red (0) through white (50) to
    blue (100). Returns ``{"path", "panels": [{"title", "systems", "values", "labels"}]}`` (None on the
    diagonal and where a pair was not compared)."""
    panels = []
    for title, mx in matrices:
        systems = list(mx["systems"])
        values, labels = [], []
        for x in systems:
            row_v, row_l = [], []
            for y in systems:
                c = mx["cells"].get(x, {}).get(y) if x != y else None
                row_v.append(None if c is None else float(c["win_rate_pct"]))
                row_l.append(None if c is None else _cell_text(c))
            values.append(row_v)
            labels.append(row_l)
        panels.append({"title": title, "systems": systems, "values": values, "labels": labels})
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    size = max(len(p["systems"]) for p in panels) if panels else 2
    side = 1.1 + 0.9 * size
    fig = _figure(side * cols + 0.8, side * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for ax, p in zip(axes, panels):
        grid = np.array([[np.nan if v is None else v for v in r] for r in p["values"]], dtype=float)
        image = ax.imshow(grid, cmap="RdBu", vmin=0, vmax=100)
        n = len(p["systems"])
        for i in range(n):
            for j in range(n):
                text = "—" if p["labels"][i][j] is None else p["labels"][i][j]
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
        ax.set_xticks(range(n), p["systems"], rotation=20, ha="right", fontsize=7)
        ax.set_yticks(range(n), p["systems"], fontsize=7)
        ax.set_xlabel("over", fontsize=7)
        ax.set_title(p["title"], fontsize=8, wrap=True)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[: len(panels)]), shrink=0.8, label="win rate of row over column, %")
    fig.suptitle(f"Win rate of each row system over each column system (%, ties excluded) and its "
                 f"{confidence:.0%} interval", fontsize=9)
    return {"path": str(_save(fig, path)), "panels": panels}
