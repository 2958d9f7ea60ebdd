"""experiments/completeness_probe.py: the cross-validated AUC and its verdict, on synthetic features (no model)."""

import importlib.util
from pathlib import Path

import numpy as np

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "completeness_probe.py"
_spec = importlib.util.spec_from_file_location("completeness_probe_exp", _PATH)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def _table(n, rng, signal):
    """Rows of every feature; ``signal`` names the one feature that carries the label."""
    y = rng.integers(0, 2, n)
    rows = [{c: float(rng.normal()) for c in probe.ANSWER + probe.QUESTION} for _ in range(n)]
    for row, label in zip(rows, y):
        row[signal] += 1.5 * label
    return rows, y


def test_a_feature_that_carries_the_label_clears_the_baseline_and_noise_does_not():
    rows, y = _table(300, np.random.default_rng(0), "cover_top3")
    sets = probe.probe(rows, y)
    assert sets["answer features"]["clears_baseline"] and sets["answer features"]["auc"] > 0.75
    assert sets["answer features"]["low"] <= sets["answer features"]["auc"] <= sets["answer features"]["high"]
    assert not sets["question only"]["clears_baseline"] and not sets["length only"]["clears_baseline"]
    assert sets["single features"]["cover_top3"] > 0.75
    assert "can rank answers" in probe.verdict(sets)


def test_a_signal_only_in_the_question_is_no_completeness_reward():
    rows, y = _table(300, np.random.default_rng(1), "passage_sentences")
    sets = probe.probe(rows, y)
    assert sets["question only"]["clears_baseline"] and not sets["answer features"]["clears_baseline"]
    text = probe.verdict(sets)
    assert "not run" in text and "same for every answer" in text
    md = probe.markdown({"questions": 300, "complete_rate": float(y.mean()), "sets": sets, "verdict": text})
    assert md.count("| no |") >= 2 and "| question only (1) |" in md
