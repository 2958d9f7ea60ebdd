"""A rerun never destroys the previous run before its inputs are checked; an existing run is only continued
(--resume) or replaced (--overwrite) on request; a bad output location is one line before any work."""

from __future__ import annotations

import argparse
import json

import pytest
import tiny

from alarm.config import load_recipe
from alarm.errors import AlarmError
from alarm.recipes import ppo as recipes_ppo
from alarm.recipes.ppo import run


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_policy")
    tiny.causal_lm().save_pretrained(d)
    tiny.tokenizer().save_pretrained(d)
    return d


def _old_run(run_dir):
    """What an earlier run left: four checkpoints, its metrics, its config."""
    for step in range(1, 5):
        ckpt = run_dir / "checkpoints" / f"step-{step:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 5)))
    (run_dir / "config.yaml").write_text("name: old\n")
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _recipe(policy_dir, run_dir, *extra):
    return load_recipe(None, [f"model.name={policy_dir}", f"output_dir={run_dir}", "name=tiny",
                              "rewards.holistic={type: length}", "rewards.aspects={}", "rewards.normalize=[]", "combine.mode=weighted_sum", "sample.prompts=2",
                              "sample.max_new_tokens=4", "ppo.steps=1", "ppo.rollout_batch_size=2",
                              "ppo.mini_batch_size=2", "ppo.max_new_tokens=4", *extra])


def _unchanged(run_dir, before):
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
def test_a_typo_in_the_data_path_leaves_the_previous_run_untouched(tmp_path, policy_dir, flags):
    before = _old_run(tmp_path)
    with pytest.raises(AlarmError, match="cannot read QA data"):
        run(_recipe(policy_dir, tmp_path, f"data.path={tmp_path / 'typo.jsonl'}"), steps=("sample", "train"),
            **flags)
    assert _unchanged(tmp_path, before)


def test_an_existing_run_is_refused_without_resume_or_overwrite(tmp_path, policy_dir):
    before = _old_run(tmp_path)
    with pytest.raises(AlarmError, match="already holds a run; pass --resume .*--overwrite"):
        run(_recipe(policy_dir, tmp_path), steps=("sample", "train"))
    assert _unchanged(tmp_path, before)


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, policy_dir):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(AlarmError, match="does not look like an alarm run"):
        run(_recipe(policy_dir, tmp_path), steps=("sample", "train"), overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_an_output_path_that_is_a_file_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    target = tmp_path / "run"
    target.write_text("")
    monkeypatch.setattr(recipes_ppo, "load_policy", lambda *a, **k: pytest.fail("loaded the model first"))
    with pytest.raises(AlarmError, match="is a file"):
        run(load_recipe(None, [f"output_dir={target}"]))


def test_resume_with_no_checkpoint_says_it_starts_fresh(tmp_path, policy_dir, capsys):
    run(_recipe(policy_dir, tmp_path), steps=("sample", "train"), resume=True)
    out = capsys.readouterr().out
    assert "no checkpoint in" in out and "training starts fresh" in out
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


def test_resume_path_and_overwrite_on_the_command_line():
    from alarm.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--config", "r.yaml", "--resume", "ppo.steps=3"])
    recipes_ppo.resume_arg(args)
    assert args.resume is True and args.overrides == ["ppo.steps=3"]
    args = parser.parse_args(["run", "--config", "r.yaml", "--resume", "runs/x/checkpoints/step-000002"])
    assert args.resume == "runs/x/checkpoints/step-000002"
    assert parser.parse_args(["quickstart", "--overwrite"]).overwrite
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--config", "r.yaml", "--resume", "--overwrite"])
    assert isinstance(parser, argparse.ArgumentParser)


def test_vcb_overwrite_keeps_the_old_training_run_when_the_samples_are_missing(tmp_path):
    from alarm.recipes.vcb import load_vcb_recipe, run_train

    recipe = load_vcb_recipe(None, [f"output_dir={tmp_path}"])
    before = _old_run(recipe.training_dir())
    with pytest.raises(AlarmError, match="no samples at"):
        run_train(recipe, overwrite=True, progress=False)
    assert _unchanged(recipe.training_dir(), before)
    with pytest.raises(SystemExit):
        from alarm.cli import build_parser

        build_parser().parse_args(["vcb", "train", "--config", "r.yaml", "--resume", "--overwrite"])
