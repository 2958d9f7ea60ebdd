"""The whole recipe flow (sample → fit → select → train → evaluate → report) on a tiny saved model."""

import json

import pytest
import tiny

from alarm.config import load_recipe
from alarm.recipes.ppo import run, win_rate


def test_win_rate_counts_ties_and_direction():
    w = win_rate([3, 1, 2, None], [1, 2, 2, 5])
    assert (w["win_rate"], w["wins"], w["losses"], w["ties"], w["n_missing"]) == (0.5, 1, 1, 1, 1)
    assert win_rate([1, 1], [2, 2], higher_is_better=False)["win_rate"] == 1.0
    assert win_rate([1], [1])["win_rate"] is None


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_policy")
    tiny.causal_lm().save_pretrained(d)
    tiny.tokenizer().save_pretrained(d)
    return d


def test_recipe_runs_end_to_end(tmp_path, tiny_model_dir, minilm, capsys):
    recipe = load_recipe(None, [
        f"model.name={tiny_model_dir}", f"output_dir={tmp_path}", "name=tiny",
        "rewards.holistic={type: reference_similarity}",
        "rewards.aspects={relevance: {type: relevance}, words: {type: length}}",
        "sample.prompts=4", "sample.max_new_tokens=8", "ppo.steps=2", "ppo.rollout_batch_size=4",
        "ppo.mini_batch_size=2", "ppo.max_new_tokens=8", "eval.max_new_tokens=8", "eval.max_prompts=4",
        "selection.max_conflict=1.0",
    ])
    result = run(recipe)
    for name in ("config.yaml", "initial_samples.jsonl", "reward_state.json", "selection.json", "selection.png",
                 "metrics.jsonl", "training.png", "eval.json", "paired_differences.png", "report.md",
                 "eval/win_rates.png"):
        assert (tmp_path / name).exists(), name
    samples = [json.loads(x) for x in (tmp_path / "initial_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {"holistic", "relevance", "words"} <= set(samples[0])
    state = json.loads((tmp_path / "reward_state.json").read_text())
    assert state["normalizers"]["holistic"]["count"] == 8
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert set(result["means"]) == {"initial", "trained"} and result["n_prompts"] == 4
    assert "holistic" in result["win_rates"]
    saved = json.loads((tmp_path / "eval.json").read_text())  # the intervals are in the file, not only the report
    ci = saved["mean_ci"]["trained"]["holistic"]
    assert ci["n"] == 4 and ci["low"] <= saved["means"]["trained"]["holistic"] <= ci["high"]
    report = (tmp_path / "report.md").read_text()
    assert "Reward selection" in report and "win rate" in report
    # what a reader looks at: the result in words, the paired-difference plot, answers side by side, smoothed curves
    head = saved["headline"]
    assert head["metric"] == "holistic.z" and head["n_prompts"] == 4
    for key in ("paired_difference", "length_change", "length_controlled"):
        assert {"mean", "low", "high"} <= set(head[key])
    assert {"pct", "low", "high", "wins", "losses", "ties"} <= set(head["win_rate"])
    assert head["paired_difference"]["mean"] == pytest.approx(saved["win_rates"]["holistic.z"]["mean_diff"])
    assert report.index("## Result") < report.index("## Every metric")
    assert "![paired differences](paired_differences.png)" in report and "![training curves](training.png)" in report
    assert "moving average" in report and "## Example answers" in report
    ex = saved["examples"][0]
    assert f"| {' '.join(ex['initial']['completion'].split()) or '(empty)'} | " in report.replace("\\|", "|")
    compared = json.loads((tmp_path / "eval" / "compare.json").read_text())
    assert list(compared["pairs"]) == ["trained vs initial"]  # read as the question a reader asks
    printed = capsys.readouterr().out
    lead = printed[printed.index("Result on 4 test questions"):]
    assert all(len(line) <= 80 for line in lead.splitlines()) and "| metric |" not in lead
    assert "Length control" in lead and ("Largest gain" in lead or "At random" in lead)
    assert lead.rstrip().endswith("report.md")

    # Running again with --overwrite starts afresh: one record per step, not the old ones appended.
    recipe.ppo.steps = 1
    run(recipe, steps=("sample", "train"), overwrite=True)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (tmp_path / "selection_pairs.jsonl").exists()  # no selection step: no greedy outputs drawn for it


def test_mt_recipe_runs_through_the_pipeline_on_a_tiny_model(tmp_path, tiny_model_dir, minilm):
    """recipes/mt.yaml's data and rewards (grammar offline, readability, language confidence) end to end."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    recipe = load_recipe(root / "recipes" / "mt.yaml", [
        f"model.name={tiny_model_dir}", f"output_dir={tmp_path}", f"data.path={root / 'tests/data/mt_pairs.jsonl'}",
        "sample.prompts=3", "sample.max_new_tokens=6", "ppo.steps=1", "ppo.rollout_batch_size=2",
        "ppo.mini_batch_size=2", "ppo.max_new_tokens=6", "eval.max_new_tokens=6", "eval.max_prompts=3",
        "selection.max_conflict=1.0",
    ])
    result = run(recipe)
    samples = [json.loads(x) for x in (tmp_path / "initial_samples.jsonl").read_text().splitlines()]
    assert {"holistic", "grammar", "readability", "language_confidence"} <= set(samples[0])
    state = json.loads((tmp_path / "reward_state.json").read_text())
    assert set(state["normalizers"]) == {"holistic", "readability"}
    assert result["n_prompts"] == 3


# ------------------------------------------------------------------ 5. full fine-tuning evaluation


def test_full_finetuning_evaluates_the_frozen_initial_policy(tmp_path):
    import json

    from alarm.config import load_recipe
    from alarm.data.prompts import prompt_records
    from alarm.generation import generate_texts
    from alarm.recipes.ppo import run

    model_dir = tmp_path / "policy"
    tiny.causal_lm().save_pretrained(model_dir)
    tiny.tokenizer().save_pretrained(model_dir)
    recipe = load_recipe(None, [
        f"model.name={model_dir}", f"output_dir={tmp_path / 'run'}", "rewards.holistic={type: length}",
        "sample.prompts=4", "sample.max_new_tokens=6", "ppo.steps=2", "ppo.rollout_batch_size=4",
        "ppo.mini_batch_size=2", "ppo.max_new_tokens=6", "ppo.lora=false", "ppo.learning_rate=0.05",
        "eval.max_new_tokens=6", "eval.max_prompts=4", "selection.enabled=false",
    ])
    run(recipe)
    initial = [json.loads(x) for x in (tmp_path / "run" / "eval" / "initial.jsonl").read_text().splitlines()]
    trained = [json.loads(x) for x in (tmp_path / "run" / "eval" / "trained.jsonl").read_text().splitlines()]
    fresh = tiny.causal_lm()  # the initial policy, untouched
    records = prompt_records(recipe.data, tiny.tokenizer(), recipe.data.test_split)[:4]
    expected = [t[0] for t in generate_texts(fresh, tiny.tokenizer(), [r["prompt"] for r in records],
                                             max_new_tokens=6, batch_size=16)]
    assert [r["completion"] for r in initial] == expected
    assert [r["completion"] for r in trained] != expected  # training at lr 0.05 changed the policy
