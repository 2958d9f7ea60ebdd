"""Evaluation: generate responses, score them with rewards, select aspect rewards, compare systems (with an
LLM judge), and write reports. The CLI commands live in :mod:`alarm.recipes.evaluation`."""

from alarm.evaluation.compare import align_systems, compare_systems
from alarm.evaluation.judge import Judge, JudgeConfig, combine_orders, parse_verdict, summarize_outcomes
from alarm.evaluation.statistics import mean_ci, wilson_interval, win_counts

__all__ = ["Judge", "JudgeConfig", "align_systems", "combine_orders", "compare_systems", "mean_ci",
           "parse_verdict", "summarize_outcomes", "wilson_interval", "win_counts"]
