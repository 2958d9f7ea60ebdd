"""What a run ends with, for `alarm run` / `alarm quickstart` (PPO) and `alarm vcb train` alike: the initial and
the trained policy's answers on held-out prompts (greedy, or the mean of a few samples per prompt), scored and
compared (paired differences, win rates, a length control, example answers), a report.md with plots, and a
summary printed for an 80-column terminal that leads with the result in plain words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alarm.evaluation.compare import compare_scored, format_difference
from alarm.evaluation.plots import PPO_PANELS, plot_paired_differences, plot_training_curves
from alarm.evaluation.scoring import generation_rows, meta_path, normalize_scores, score_records
from alarm.evaluation.summary import (
    LENGTH,
    answers_text,
    difference_rows,
    examples_markdown,
    headline,
    per_question,
    pick_examples,
    shown_aspects,
    side_by_side,
    summary_lines,
)
from alarm.generation import generate_texts
from alarm.io import write_json_atomic, write_jsonl_atomic

EXAMPLES_PER_KIND = 3  # in report.md: the 3 largest gains, the 3 largest losses, 3 at random


def headline_metric(metrics: Sequence[str]) -> str | None:
    """The metric a run's result leads with: the holistic reward, z-normalised when it is."""
    return next((m for m in ("holistic.z", "holistic") if m in metrics), None)


def describe_holistic(rewards_spec, metric: str | None) -> str | None:
    """A few words on what the holistic metric is, from the recipe's rewards section."""
    spec = getattr(rewards_spec, "holistic", None) or {}
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if not kind or metric is None:
        return None
    return f"{kind}, z-normalised on the initial policy's samples" if metric.endswith(".z") else kind


def evaluate_systems(tokenizer, reward_set, records: list[dict], out: Path, systems: Mapping[str, Any], *,
                     max_new_tokens: int, batch_size: int, seed: int, run_label: str,
                     rewards_config: str | None = None, normalizers: str | None = None,
                     texts: Mapping[str, list[str]] | None = None, rewards_spec=None, samples: int = 0,
                     temperature: float = 1.0) -> dict:
    """Greedy outputs of each system on ``records`` (or, with ``samples`` ≥ 1, that many samples per prompt at
    ``temperature``, every system sampled with ``seed``), scored and compared exactly as `alarm generate` +
    `alarm score` + `alarm compare` do: ``out/<system>.jsonl``, ``out/<system>.scored.jsonl`` (every reward, raw
    and with the reward set's normalisers, and the length in words; every sample), ``out/report.md`` and
    ``out/compare.json`` (sampled: of each question's scores averaged over its samples, :func:`per_question`).

    ``systems``: name → (model, context manager factory under which that model is the system); ``texts``:
    name → answers already generated (greedy, in ``records`` order), used instead of generating. The
    comparison puts the last system first, so its win rates and differences read "trained over initial".
    Returns the result written to a run's ``eval.json``: means and their intervals, ``win_rates`` (trained
    over initial, with paired differences), ``headline`` (:func:`alarm.evaluation.summary.headline`) and
    ``examples`` (:func:`alarm.evaluation.summary.pick_examples`). ``rewards_spec``: the recipe's rewards
    section, to say in words what the holistic reward is."""
    if samples and texts:
        raise ValueError("evaluate_systems: answers given as texts are greedy; samples must be 0 with them")
    answers_are = answers_text(samples, temperature)
    scored: dict[str, list[dict]] = {}
    described_metrics: dict[str, dict] = {}
    for name, system in systems.items():
        if texts and name in texts:
            answers = [[t] for t in texts[name]]
        else:
            model, ctx = system
            with ctx():
                answers = generate_texts(model, tokenizer, [r["prompt"] for r in records],
                                         max_new_tokens=max_new_tokens, batch_size=batch_size,
                                         do_sample=samples > 0, num_samples=max(samples, 1),
                                         temperature=temperature, seed=seed,
                                         progress=f"evaluating {name}")
        rows = generation_rows(records, answers)
        generations = write_jsonl_atomic(out / f"{name}.jsonl", rows)
        decoding = {"do_sample": samples > 0, "num_samples": max(samples, 1), "max_new_tokens": max_new_tokens,
                    **({"temperature": temperature, "seed": seed} if samples else {})}
        write_json_atomic(meta_path(generations), {"policy": f"{name} policy of {run_label}", **decoding})
        scores, described_metrics = score_records(reward_set, rows, batch_size=batch_size)
        described_metrics = normalize_scores(scores, described_metrics, reward_set.normalizers)
        for row, s in zip(rows, scores):
            s[LENGTH] = float(len(row["completion"].split()))
        described_metrics[LENGTH] = {"reward": LENGTH, "kind": "raw", "higher_is_better": True}
        scored[name] = [{**row, "scores": s} for row, s in zip(rows, scores)]
        target = write_jsonl_atomic(out / f"{name}.scored.jsonl", scored[name])
        write_json_atomic(meta_path(target), {"source": str(generations), "rewards_config": rewards_config,
                                              "normalizers": normalizers, "metrics": described_metrics})
    directions = {k: v["higher_is_better"] for k, v in described_metrics.items()}
    names = list(systems)
    if samples > 1:  # one row per question, its samples' scores averaged: what is compared and summarised
        scored = {n: per_question(rows) for n, rows in scored.items()}
    compared, _, _ = compare_scored({n: scored[n] for n in reversed(names)}, directions, out, seed=seed)
    metrics = compared["metrics"]
    result: dict[str, Any] = {
        "n_prompts": len(records), "answers": answers_are, "samples": samples,
        "metrics": metrics, "higher_is_better": directions,
        "means": {s: {m: compared["means"][s][m]["mean"] for m in metrics} for s in names},
        "mean_ci": {s: {m: {k: compared["means"][s][m][k] for k in ("low", "high", "n")} for m in metrics}
                    for s in names},
        "win_rates": {}}
    if len(names) > 1:
        first, last = names[0], names[-1]
        result["win_rates"] = compared["pairs"][f"{last} vs {first}"]["metrics"]
        metric = headline_metric(metrics)
        if metric is not None:
            aspects = shown_aspects(metrics, metric)
            result["headline"] = {**headline(scored[first], scored[last], metric, aspects, seed=seed),
                                  "described": describe_holistic(rewards_spec, metric),
                                  "answers": answers_are}
            result["examples"] = pick_examples(scored[first], scored[last], metric, EXAMPLES_PER_KIND, seed=seed,
                                               shown=[*aspects, LENGTH])
    return result


# ------------------------------------------------------------------------------------------------ report.md


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def fmt_mean(mean, ci: dict | None) -> str:
    if ci is None or ci["low"] is None:
        return _fmt(mean)
    return f"{_fmt(mean)} [{ci['low']:.3f}, {ci['high']:.3f}]"


def fmt_win(w: dict) -> str:
    """The paper's win rate with its interval and the decisive pairs: '63.6 [36.4, 90.9] (11: 7–4, 5 ties)'."""
    interval = "–" if w.get("pct_low") is None else f"{w['pct_low']:.1f}, {w['pct_high']:.1f}"
    return (f"{w['win_rate_pct']:.1f} [{interval}] ({w['wins'] + w['losses']}: {w['wins']}–{w['losses']}, "
            f"{w['ties']} ties)")


def metrics_table(result: Mapping[str, Any]) -> list[str]:
    """Every metric: each system's mean [interval], trained's win rate over initial and the paired difference."""
    systems = list(result["means"])
    metrics = list(result["means"][systems[0]])
    cis = result.get("mean_ci", {})
    lines = ["| metric | " + " | ".join(systems) + " | win rate (trained over initial) | mean difference "
             "(trained − initial) |", "|---|" + "---|" * len(systems) + "---|---|"]
    for k in metrics:
        vals = " | ".join(fmt_mean(result["means"][s][k], cis.get(s, {}).get(k)) for s in systems)
        w = result["win_rates"].get(k)
        win, diff = (fmt_win(w), format_difference(w)) if w else ("—", "—")
        lines.append(f"| {k} | {vals} | {win} | {diff} |")
    return lines


def evaluation_markdown(result: Mapping[str, Any], report_dir: Path, eval_dir: str = "eval",
                        heading: str | None = None) -> list[str]:
    """The evaluation part of a run's report.md: the result in words, the paired-difference plot (written to
    ``report_dir/paired_differences.png``), example answers side by side and the table of every metric.
    ``heading`` (default: "Result (<the answers>, test prompts)")."""
    lines = [f"## {heading or 'Result (' + result.get('answers', 'greedy answers') + ', test prompts)'}", ""]
    head = result.get("headline")
    if head:
        lines += [*summary_lines(head, width=110, described=head.get("described")), "",
                  "![paired differences](paired_differences.png)", ""]
        plot_paired_differences(difference_rows(head), report_dir / "paired_differences.png",
                                confidence=head["confidence"])
    examples = result.get("examples") or []
    if examples:
        lines += ["## Example answers", "",
                  "The initial and the trained policy's answers to the same question: the largest gains and losses "
                  "of the holistic reward, and questions drawn at random (seeded), each with its scores.", "",
                  examples_markdown(examples)]
    lines += ["## Every metric", "",
              f"{result['n_prompts']} test prompts ({result.get('answers', 'greedy answers')}). Means with a 95 % "
              "percentile bootstrap interval over prompts. "
              "Win rate: 100·wins / (wins + losses) (ties excluded, 50 when no pair is decisive), its 95 % "
              "bootstrap interval over prompts, and the decisive pairs (wins–losses, ties). Mean difference: "
              "trained − initial question by question, with its bootstrap interval over the same draws.", "",
              *metrics_table(result), "",
              f"Answers, scores and the full comparison (means, win-rate matrices): [{eval_dir}/report.md]"
              f"({eval_dir}/report.md).", ""]
    return lines


def training_markdown(history: Sequence[Mapping[str, Any]], report_dir: Path,
                      panels=PPO_PANELS, heading: str = "Training") -> list[str]:
    """The training curves (``report_dir/training.png``) and their section of report.md."""
    if not history:
        return []
    drawn = plot_training_curves(history, report_dir / "training.png", panels)
    return [f"## {heading}", "", f"Each step's value as a faint point, its moving average over {drawn['window']} "
            "step(s) as a line.", "", "![training curves](training.png)", ""]


# ------------------------------------------------------------------------------------------------ the terminal


def print_result(result: Mapping[str, Any], report: Path | str | None = None, width: int = 80,
                 out: Callable[[str], None] = print) -> None:
    """The summary a run prints: the result in plain words, three example answers side by side (the largest
    gain, the largest loss, one at random), then where the full report is; every line ``width`` at most."""
    head = result.get("headline")
    if not head:
        return
    out("")
    out("\n".join(summary_lines(head, width=width, described=head.get("described"))))
    shown = []
    for kind in ("largest gain", "largest loss", "at random"):
        ex = next((e for e in result.get("examples") or [] if e["kind"] == kind), None)
        if ex is not None:
            shown.append(ex)
    for ex in shown:
        out("")
        out("\n".join(side_by_side(ex, width=width)))
    if report is not None:
        out("")
        out(f"Full report (plots, {len(result.get('examples') or [])} example answers, every metric):")
        out(f"  {report}")
