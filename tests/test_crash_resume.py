"""Nothing lost by default: with no save_every set, a crash costs at most the step in progress (PPO and VCB,
and the quickstart recipe on a tiny model); a resume refuses a checkpoint that trained other parameters and
applies (and says) a changed learning rate instead of recording one and training with another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny

from alarm import checkpoints
from alarm.checkpoints import write_manifest
from alarm.errors import AlarmError


class Crash(Exception):
    pass


def crash_at(trainer, doomed: int):
    """Make ``trainer.step`` raise when it would run step ``doomed`` (1-based): a kill during that step."""
    original = trainer.step

    def step():
        if trainer.step_idx + 1 == doomed:
            raise Crash
        return original()

    trainer.step = step


def ppo_trainer(tmp_path, **cfg):
    from test_ppo import trainer

    return trainer(tmp_path, **{"steps": 4, **cfg})


def test_a_default_ppo_run_killed_in_step_3_resumes_from_step_2(tmp_path):
    tr = ppo_trainer(tmp_path)
    assert tr.config.save_every == 0  # the default
    crash_at(tr, 3)
    with pytest.raises(Crash):
        tr.train(progress=False)
    again = ppo_trainer(tmp_path)
    assert again.resume() == 2
    assert [m["step"] for m in again.train(progress=False)] == [3, 4]


def test_rolling_checkpoints_stay_few_and_save_every_ones_stay(tmp_path):
    ppo_trainer(tmp_path / "a", steps=5).train(progress=False)
    names = sorted(p.name for p in checkpoints.checkpoints_newest_first(tmp_path / "a"))
    assert names == ["step-000003", "step-000004", "step-000005"]  # two rolling ones and the last
    ppo_trainer(tmp_path / "b", steps=7, save_every=3).train(progress=False)
    names = sorted(p.name for p in checkpoints.checkpoints_newest_first(tmp_path / "b"))
    assert names == [f"step-00000{i}" for i in (3, 4, 5, 6, 7)]  # 3, 6 and the last kept; rolling 4, 5


def test_saving_costlier_than_a_tenth_of_training_waits(tmp_path):
    times = iter([0.0, 10.0, 10.0, 10.0, 15.0, 20.0, 20.0, 20.0])
    saver = checkpoints.Saver(tmp_path, save_every=0, total=100, clock=lambda: next(times))
    saved = []
    assert saver.after_step(1, lambda: saved.append(1) or tmp_path) is not None  # nothing measured yet: saved
    saver.cost = 6.0  # a save of 6 s (over the 2 free ones) needs 60 s of training since the last one
    assert saver.after_step(2, lambda: saved.append(2) or tmp_path) is None  # 5 s later: not yet
    assert saver.after_step(100, lambda: saved.append(100) or tmp_path) is not None  # the last step always
    assert saved == [1, 100]


def test_a_default_vcb_run_killed_in_step_3_resumes_from_step_2(tmp_path):
    from test_vcb import _trainer

    tr = _trainer(tmp_path, max_steps=4)
    assert tr.config.save_every == 0
    crash_at(tr, 3)
    with pytest.raises(Crash):
        tr.train(progress=False)
    assert _trainer(tmp_path, max_steps=4).resume() == 2


@pytest.mark.parametrize("change", [{"lora_layers": [0]}, {"lora_r": 4}, {"lora_target_modules": ["q_proj"]}])
def test_resume_with_another_adapter_layout_is_refused(tmp_path, change):
    ppo_trainer(tmp_path, steps=1, lora_layers=[1]).train(progress=False)
    with pytest.raises(AlarmError, match=f"trained with {next(iter(change))}="):
        ppo_trainer(tmp_path, steps=2, **{"lora_layers": [1], **change}).resume()


def test_an_older_checkpoint_without_settings_is_checked_by_its_tensors(tmp_path):
    ppo_trainer(tmp_path, steps=1, lora_layers=[1]).train(progress=False)
    ckpt = checkpoints.latest_checkpoint(tmp_path)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["config"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    write_manifest(ckpt)
    with pytest.raises(AlarmError, match="another adapter layout"):
        ppo_trainer(tmp_path, steps=2, lora_layers=[0]).resume()


def test_a_changed_learning_rate_on_resume_is_applied_and_said(tmp_path, capsys):
    ppo_trainer(tmp_path, steps=1, learning_rate=1e-3).train(progress=False)
    tr = ppo_trainer(tmp_path, steps=2, learning_rate=1e-2)
    assert tr.resume() == 1
    assert {g["lr"] for g in tr.optimizer.param_groups} == {1e-2}
    assert "learning_rate 0.01 from the settings (the checkpoint trained with 0.001)" in capsys.readouterr().out


def test_a_default_quickstart_run_killed_after_step_2_resumes_from_step_2(tmp_path, minilm, capsys, monkeypatch):
    """The quickstart recipe as shipped, on a tiny policy and a few prompts: killed during step 3, the rerun
    with --resume continues from step 2 (not 'training starts fresh') and ends with every step once."""
    from test_recipe_ppo import tiny_model_dir  # noqa: F401 (the fixture's code, called directly below)

    from alarm.config import load_recipe
    from alarm.recipes import ppo as ppo_recipe
    from alarm.trainers.ppo import PPOTrainer

    model_dir = tmp_path / "policy"
    tiny.causal_lm().save_pretrained(model_dir)
    tiny.tokenizer().save_pretrained(model_dir)
    qs = Path(ppo_recipe.__file__).with_name("quickstart.yaml")
    recipe = load_recipe(qs, [f"model.name={model_dir}", f"output_dir={tmp_path / 'run'}", "ppo.lora_layers=null",
                              "ppo.steps=4", "sample.prompts=4", "sample.max_new_tokens=8", "ppo.max_new_tokens=8",
                              "ppo.rollout_batch_size=4", "ppo.mini_batch_size=2", "ppo.ppo_epochs=1"])
    assert recipe.ppo.save_every == 0
    original = PPOTrainer.step

    def killed_in_step_3(self):
        if self.step_idx == 2:
            raise Crash
        return original(self)

    monkeypatch.setattr(PPOTrainer, "step", killed_in_step_3)
    with pytest.raises(Crash):
        ppo_recipe.run(recipe, steps=("sample", "train"))
    monkeypatch.setattr(PPOTrainer, "step", original)
    capsys.readouterr()
    ppo_recipe.run(recipe, steps=("sample", "train"), resume=True)
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "starts fresh" not in out
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
