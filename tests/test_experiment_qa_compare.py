"""experiments/qa_compare.py: the committed answers file keeps no prompt text and rebuilds the scored rows."""

import importlib.util
from pathlib import Path

import pytest

from alarm.evaluation.scoring import generation_rows

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "qa_compare.py"
_spec = importlib.util.spec_from_file_location("qa_compare_bench", _PATH)
qa_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qa_compare)


def _records():
    return [{"id": f"q{i}", "prompt": f"<passages {i}> question {i}?", "passages": [f"passage {i}"],
             "question": f"question {i}?", "reference": f"answer {i}"} for i in range(3)]


def _scored(records, name, seed):
    rows = generation_rows(records, [[f"{name} says {r['id']}"] for r in records])
    return [{**row, "system": name, "seed": seed, "scores": {"holistic.z": 0.1 * k, "length_tokens": 3.0}}
            for k, row in enumerate(rows)]


def test_saved_answers_rebuild_the_scored_rows_without_keeping_prompt_text():
    records = _records()
    scored = _scored(records, "hierarchical-s2", 2) + _scored(records, "initial", None)
    saved = qa_compare.answers_only(scored[:3], 40) + qa_compare.answers_only(scored[3:], None)
    kept_text = " ".join(str(v) for a in saved for v in a.values())
    assert "passage" not in kept_text and "question" not in kept_text
    assert [a["steps"] for a in saved] == [40] * 3 + [None] * 3
    # records in another order: rows are rebuilt by id, not by position
    assert qa_compare.restore_scored(saved, records[::-1], "hierarchical-s2") == scored[:3]
    assert qa_compare.restore_scored(saved, records, "initial") == scored[3:]


def test_saved_answers_to_other_questions_are_refused_by_name():
    records = _records()
    saved = qa_compare.answers_only(_scored(records, "weighted_sum-s1", 1), 40)
    with pytest.raises(SystemExit, match="weighted_sum-s1.*--eval-questions"):
        qa_compare.restore_scored(saved, records[:2], "weighted_sum-s1")


def test_saved_answers_that_miss_questions_of_the_evaluation_are_refused():
    records = _records()
    saved = qa_compare.answers_only(_scored(records[:2], "weighted_sum-s1", 1), 40)
    with pytest.raises(SystemExit, match="weighted_sum-s1.*none to 1 of its questions"):
        qa_compare.restore_scored(saved, records, "weighted_sum-s1")
