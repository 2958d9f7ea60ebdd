"""A run's report: the plots hold the series they should (checked on the data they drew, not on pixels), the
headline numbers (paired difference, win rate with ties, length change, length control) are right, the
examples are the largest gains / losses and a seeded draw, and the printed text fits 80 columns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarm.evaluation.compare import compare_scored, paired_difference, win_counts
from alarm.evaluation.plots import (
    moving_average,
    plot_paired_differences,
    plot_training_curves,
    plot_win_rate_heatmaps,
)
from alarm.evaluation.summary import (
    difference_rows,
    examples_markdown,
    headline,
    per_question,
    pick_examples,
    shown_aspects,
    side_by_side,
    summary_lines,
)

# --------------------------------------------------------------------------------------------- moving average


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=1, max_size=30), st.integers(1, 8))
def test_moving_average_is_the_trailing_mean_of_the_values_present(values, window):
    out = moving_average(values, window)
    assert len(out) == len(values)
    for i, got in enumerate(out):
        seen = [v for v in values[max(0, i - window + 1): i + 1] if v is not None]
        if not seen:
            assert got is None
        else:
            assert got == pytest.approx(sum(seen) / len(seen), rel=1e-9, abs=1e-6)
            assert min(seen) - 1e-6 <= got <= max(seen) + 1e-6
    if window == 1:
        assert out == [None if v is None else float(v) for v in values]


def test_moving_average_refuses_an_empty_window():
    with pytest.raises(ValueError):
        moving_average([1.0], 0)


# --------------------------------------------------------------------------------------------- plots


def test_training_curves_draw_raw_points_under_their_moving_average(tmp_path):
    rng = np.random.default_rng(0)
    history = [{"step": s, "rewards/holistic/mean": float(rng.normal()), "rewards/grounding/mean": 0.1 * s,
                "rewards/grounding/weighted_shaped_sum": 9.0, "gate_open_rate": 0.5, "kl": 0.01 * s,
                "length/tokens": 20.0} for s in range(1, 13)]
    history[3]["kl"] = float("nan")  # a missing value is left out, not drawn as a gap in the average
    drawn = plot_training_curves(history, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn["window"] == 3  # a quarter of 12 steps
    assert list(drawn["panels"]) == ["rewards (batch means)", "gate-open rate", "KL to the reference",
                                     "response length (tokens)"]
    rewards = drawn["panels"]["rewards (batch means)"]
    assert set(rewards) == {"rewards/holistic/mean", "rewards/grounding/mean"}  # not the shaped sums
    h = rewards["rewards/holistic/mean"]
    assert h["steps"] == list(range(1, 13)) and h["raw"] == [m["rewards/holistic/mean"] for m in history]
    assert h["smoothed"] == moving_average(h["raw"], 3)
    assert drawn["panels"]["KL to the reference"]["kl"]["steps"] == [s for s in range(1, 13) if s != 4]
    # a run without a gate (holistic only) or without KL: those panels are left out
    bare = plot_training_curves([{"step": s, "kl": 0.0} for s in (1, 2)], tmp_path / "b.png")
    assert list(bare["panels"]) == ["KL to the reference"] and bare["window"] == 1


def test_paired_differences_put_length_on_its_own_axis(tmp_path):
    head = {"metric": "holistic.z", "paired_difference": {"mean": 0.2, "low": 0.05, "high": 0.4},
            "aspects": {"grounding.share_positive": {"mean": -0.1, "low": -0.2, "high": -0.01}},
            "length_controlled": {"max_relative_change": 0.2, "n": 30, "mean": 0.15, "low": -0.02, "high": 0.3},
            "length_change": {"relative": 0.25, "relative_low": 0.1, "relative_high": 0.4}}
    drawn = plot_paired_differences(difference_rows(head), tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
    reward, length = drawn["panels"]["reward difference"], drawn["panels"]["length change, % of the initial mean"]
    assert [r["label"] for r in reward] == ["holistic.z", "grounding.share_positive",
                                            "holistic.z, length within ±20% (n=30)"]
    assert (reward[0]["mean"], reward[0]["low"], reward[0]["high"]) == (0.2, 0.05, 0.4)
    assert [(r["label"], r["mean"], r["low"], r["high"]) for r in length] == [("answer length", 25.0, 10.0, 40.0)]
    # a metric without a value is not drawn
    drawn = plot_paired_differences([{"label": "x", "mean": None}], tmp_path / "e.png")
    assert drawn["panels"] == {}


def _records(values: dict[str, list], words: list[int] | None = None, texts: list[str] | None = None):
    n = len(next(iter(values.values())))
    words = words or [5] * n
    return [{"prompt_id": f"q{i}", "sample": 0, "question": f"Question {i}?",
             "completion": texts[i] if texts else " ".join(["w"] * words[i]),
             "scores": {k: v[i] for k, v in values.items()}} for i in range(n)]


def test_win_rate_heatmaps_hold_each_cell_with_its_interval(tmp_path):
    a = _records({"r": [3.0, 2.0, 1.0, 5.0, 4.0, 0.0]})
    b = _records({"r": [1.0, 2.0, 2.0, 1.0, 1.0, 1.0]})
    c = _records({"r": [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]})
    result, _, plots = compare_scored({"a": a, "b": b, "c": c}, {"r": True}, tmp_path / "cmp")
    assert (tmp_path / "cmp" / "win_rates.png").exists() and tmp_path / "cmp" / "win_rates.png" in plots
    drawn = plot_win_rate_heatmaps([("r", result["matrices"]["r"])], tmp_path / "h.png")
    (panel,) = drawn["panels"]
    assert panel["systems"] == ["a", "b", "c"]
    cells = result["matrices"]["r"]["cells"]
    for i, x in enumerate("abc"):
        for j, y in enumerate("abc"):
            if x == y:
                assert panel["values"][i][j] is None and panel["labels"][i][j] is None
            else:
                cell = cells[x][y]
                assert panel["values"][i][j] == cell["win_rate_pct"]
                assert panel["labels"][i][j] == (f"{cell['win_rate_pct']:.1f}\n"
                                                 f"[{cell['pct_low']:.0f}–{cell['pct_high']:.0f}]")
    assert panel["values"][0][1] == 60.0 and panel["values"][1][0] == 40.0  # a over b: 3 wins, 2 losses, 1 tie


# --------------------------------------------------------------------------------------------- headline


def test_headline_numbers_and_the_length_control():
    h_i = [0.0, 1.0, 0.5, 0.2, 0.3, 0.9]
    h_t = [1.0, 0.5, 0.5, 0.6, 0.3, 1.9]
    words_i = [10, 10, 10, 4, 10, 10]
    words_t = [11, 30, 10, 20, 9, 14]  # relative changes 0.1, 2, 0, 4, 0.1, 0.4: q0, q2, q4 keep their length
    initial = _records({"holistic.z": h_i, "g.share_positive": [0.5] * 6}, words_i)
    trained = _records({"holistic.z": h_t, "g.share_positive": [0.7] * 6}, words_t)
    head = headline(initial, trained, "holistic.z", ["g.share_positive"], seed=3)
    w = win_counts(h_t, h_i, seed=3)
    assert head["paired_difference"] == {"mean": w.mean_diff, "low": w.diff_low, "high": w.diff_high}
    assert head["paired_difference"]["mean"] == pytest.approx(np.mean(np.subtract(h_t, h_i)))
    assert (head["win_rate"]["wins"], head["win_rate"]["losses"], head["win_rate"]["ties"]) == (3, 1, 2)
    assert head["win_rate"]["pct"] == 75.0
    assert head["aspects"]["g.share_positive"]["mean"] == pytest.approx(0.2)
    ln = head["length_change"]
    assert (ln["initial_words"], ln["trained_words"]) == (9.0, pytest.approx(94 / 6))
    assert ln["mean"] == pytest.approx(40 / 6) and ln["relative"] == pytest.approx(40 / 6 / 9)
    assert ln["relative_low"] == pytest.approx(ln["low"] / 9)
    lc = head["length_controlled"]
    assert lc["n"] == 3 and lc["mean"] == pytest.approx(np.mean([1.0, 0.0, 0.0]))
    masked = [x if k in (0, 2, 4) else None for k, x in enumerate(h_t)]
    assert (lc["mean"], lc["low"], lc["high"]) == paired_difference(masked, h_i, seed=3)
    assert json.loads(json.dumps(head)) == head  # what eval.json holds


def test_shown_aspects_prefer_the_readable_summary():
    metrics = ["holistic", "holistic.z", "grounding.mean_emitted", "grounding.share_positive", "readability",
               "readability.z", "grammar", "length_words"]
    assert shown_aspects(metrics, "holistic.z") == ["grounding.share_positive", "readability.z", "grammar"]


def test_examples_are_the_largest_gains_and_losses_and_a_seeded_draw():
    diffs = [0.5, -1.0, 2.0, 0.0, -0.2, 1.0, 0.1, -0.3, 0.05, 0.0]
    initial = _records({"holistic.z": [0.0] * 10, "g": [1.0] * 10})
    trained = _records({"holistic.z": diffs, "g": [2.0] * 10})
    ex = pick_examples(initial, trained, "holistic.z", n=2, seed=7, shown=["g"])
    kinds = [e["kind"] for e in ex]
    assert kinds == ["largest gain"] * 2 + ["largest loss"] * 2 + ["at random"] * 2
    assert [e["prompt_id"] for e in ex[:4]] == ["q2", "q5", "q1", "q7"]
    assert [e["difference"] for e in ex[:4]] == [2.0, 1.0, -1.0, -0.3]
    drawn = {e["prompt_id"] for e in ex[4:]}
    assert len(drawn) == 2 and not drawn & {"q2", "q5", "q1", "q7"}
    assert pick_examples(initial, trained, "holistic.z", n=2, seed=7, shown=["g"]) == ex  # seeded
    assert ex[0]["initial"]["scores"] == {"holistic.z": 0.0, "g": 1.0} and ex[0]["question"] == "Question 2?"
    # no loss at all: the kind is simply absent
    assert "largest loss" not in [e["kind"] for e in pick_examples(initial, initial, "holistic.z", n=1)]


def test_printed_summary_fits_80_columns_and_says_what_it_means():
    long_answer = "The answer is " + " ".join(f"word{i}" for i in range(80)) + " | with a pipe"
    initial = _records({"holistic.z": [0.0, 0.1, 0.3, -0.2], "g.share_positive": [0.5, 0.5, 0.4, 0.2]},
                       texts=["Short.", long_answer, "Paris.", ""])
    trained = _records({"holistic.z": [0.9, -0.4, 0.8, 0.3], "g.share_positive": [0.6, 0.5, 0.5, 0.4]},
                       texts=["A longer answer, still short.", "No.", long_answer, "x " * 300])
    head = headline(initial, trained, "holistic.z", ["g.share_positive"])
    lines = summary_lines(head, described="similarity to the reference answer")
    assert all(len(line) <= 80 for line in lines)
    text = " ".join(" ".join(lines).split())
    for phrase in ("Result on 4 test questions", "paired difference", "trained better on 3, initial on 1, 0 ties",
                   "win rate 75.0%", "g.share_positive", "Length:", "words per answer", "Length control"):
        assert phrase in text, phrase
    for ex in pick_examples(initial, trained, "holistic.z", n=1, shown=["g.share_positive", "length_words"]):
        block = side_by_side(ex)
        assert all(len(line) <= 80 for line in block)
        assert any(" │ " in line for line in block) and any("INITIAL:" in line for line in block)
        assert any("TRAINED:" in line for line in block)
        assert sum(1 for line in block if " │ " in line) <= 8 + 3  # long answers are cut at 8 lines
    md = examples_markdown(pick_examples(initial, trained, "holistic.z", n=1))
    assert "word79 | with" not in md and "word79 \\| with a pipe" in md  # a pipe does not break the table
    assert "| Short. | A longer answer, still short. |" in md


# ------------------------------------------------------------------------- sampled answers, averaged per question

_maybe = st.one_of(st.none(), st.floats(-5, 5, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(_maybe, _maybe), min_size=1, max_size=4), min_size=1, max_size=6))
def test_per_question_averages_each_score_over_a_questions_samples(questions):
    rows = [{"prompt_id": f"q{i}", "sample": k, "completion": f"answer {i}.{k}", "question": f"Q{i}?",
             "scores": {"h": h, "length_words": w}} for i, samples in enumerate(questions)
            for k, (h, w) in reversed(list(enumerate(samples)))]  # sample order in the file does not matter
    out = per_question(rows)
    assert [r["prompt_id"] for r in out] == [f"q{i}" for i in range(len(questions))]
    for r, samples in zip(out, questions):
        assert r["samples"] == len(samples) and r["completion"] == f"answer {r['prompt_id'][1:]}.0"
        for j, key in enumerate(("h", "length_words")):
            present = [s[j] for s in samples if s[j] is not None]
            assert r["scores"][key] == (pytest.approx(np.mean(present)) if present else None)


def test_headline_of_sampled_answers_reads_the_mean_length_not_the_shown_text():
    rows = []
    for words in ([4, 6], [10, 14]):  # initial, trained
        rows.append([{"prompt_id": "q0", "sample": k, "completion": "one", "scores": {"h": float(k),
                      "length_words": float(w)}} for k, w in enumerate(words)])
    head = headline(per_question(rows[0]), per_question(rows[1]), "h")
    assert head["length_change"]["initial_words"] == 5.0 and head["length_change"]["trained_words"] == 12.0
    assert head["paired_difference"]["mean"] == 0.0 and head["n_prompts"] == 1


def test_sampled_evaluation_averages_per_question_with_common_random_numbers(tmp_path):
    """Both systems sampled with the run's seed: the same policy twice gives the same samples (every question
    a tie, difference 0), the scored files keep every sample, and the summary says what the answers are."""
    from contextlib import nullcontext

    import tiny
    import torch

    from alarm.config import build_reward_set, validate_recipe
    from alarm.generation import generate_texts
    from alarm.recipes.report import evaluate_systems

    model, tok = tiny.causal_lm(), tiny.tokenizer()
    records = [{"id": f"q{i}", "prompt": f"question number {i} is", "question": f"Q{i}?"} for i in range(5)]
    recipe = validate_recipe({"rewards": {"holistic": {"type": "length"}}, "combine": {"mode": "holistic_only"}})
    before = torch.random.get_rng_state()
    result = evaluate_systems(tok, build_reward_set(recipe), records, tmp_path, {"initial": (model, nullcontext),
                              "trained": (model, nullcontext)}, max_new_tokens=6, batch_size=4, seed=3,
                              run_label="test", samples=3, temperature=1.0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random state is left as it was
    scored = [json.loads(x) for x in (tmp_path / "trained.scored.jsonl").read_text().splitlines()]
    assert len(scored) == 15 and sorted({r["sample"] for r in scored}) == [0, 1, 2]
    assert len({r["completion"] for r in scored}) > 1  # sampled, not greedy
    meta = json.loads((tmp_path / "trained.jsonl.meta.json").read_text())
    assert meta["do_sample"] is True and meta["num_samples"] == 3 and meta["seed"] == 3
    head = result["headline"]
    assert head["n_prompts"] == 5 and head["paired_difference"]["mean"] == 0.0 and head["win_rate"]["ties"] == 5
    by_q = {}
    for r in scored:
        by_q.setdefault(r["prompt_id"], []).append(r["scores"]["holistic"])
    assert result["means"]["trained"]["holistic"] == pytest.approx(np.mean([np.mean(v) for v in by_q.values()]))
    text = " ".join(summary_lines(head))
    assert "the mean over 3 sampled answers (T 1) per question of the initial and the trained policy" in text
    shown = side_by_side(result["examples"][0])
    assert any("INITIAL (1 of 3; scores: their mean):" in line for line in shown)
    # another seed draws other samples
    again = generate_texts(model, tok, [r["prompt"] for r in records], max_new_tokens=6, do_sample=True,
                           num_samples=3, batch_size=4, seed=4)
    assert [c for texts in again for c in texts] != [r["completion"] for r in scored]


def test_samples_of_one_prompt_share_its_prompt_pass_and_draw_the_same_answers(monkeypatch):
    """With several samples per prompt the prompt runs once and its cache is repeated per sample: the answers are
    exactly those of running every copy of the prompt (same positions under left padding, same random draws)."""
    import tiny

    from alarm import generation

    model, tok = tiny.causal_lm(), tiny.tokenizer()
    prompts = ["question number one is", "a much longer question number two is here", "three", "four four four"]
    calls = []
    shared = generation._shared_prompt_cache

    def counting(model, enc, copies):
        calls.append(enc["input_ids"].shape[0])
        return shared(model, enc, copies)

    monkeypatch.setattr(generation, "_shared_prompt_cache", counting)
    kw = dict(max_new_tokens=8, do_sample=True, num_samples=4, batch_size=8, seed=3)
    fast = generation.generate_texts(model, tok, prompts, **kw)
    assert calls == [2, 2]  # two distinct prompts per batch of 8 sequences
    monkeypatch.setattr(generation, "_shared_prompt_cache",
                        lambda model, enc, copies: {k: v.repeat_interleave(copies, 0) for k, v in enc.items()})
    assert generation.generate_texts(model, tok, prompts, **kw) == fast
    assert len({t for texts in fast for t in texts}) > 4  # really sampled
    calls.clear()
    monkeypatch.setattr(generation, "_shared_prompt_cache", counting)
    generation.generate_texts(model, tok, prompts, **{**kw, "batch_size": 6})  # groups cut across batches: no sharing
    assert calls == []
