"""`make demo`'s sizing rule: the CPU runs the recipe as written; a CUDA GPU scales steps and prompts per step
(checked here on the CPU by asking the rule, and by faking CUDA in `alarm quickstart`)."""

import argparse
from importlib import resources

import pytest

from alarm.config import load_recipe
from alarm.recipes import ppo as ppo_recipe

QUICKSTART = str(resources.files("alarm") / "recipes" / "quickstart.yaml")


def test_the_cpu_demo_is_the_recipe_as_written():
    overrides, line = ppo_recipe.demo_budget(cuda=False, bf16=False)
    assert overrides == [] and "CPU" in line


@pytest.mark.parametrize("bf16", [True, False])
def test_the_gpu_demo_scales_steps_and_prompts_and_stays_a_valid_recipe(bf16):
    overrides, line = ppo_recipe.demo_budget(cuda=True, bf16=bf16)
    cpu, gpu = load_recipe(QUICKSTART), load_recipe(QUICKSTART, overrides)
    k = ppo_recipe.GPU_DEMO_SCALE
    assert gpu.ppo.steps == k * cpu.ppo.steps and gpu.ppo.rollout_batch_size == k * cpu.ppo.rollout_batch_size
    assert gpu.ppo.mini_batch_size == k * cpu.ppo.mini_batch_size and gpu.sample.prompts == k * cpu.sample.prompts
    assert gpu.ppo.max_new_tokens == cpu.ppo.max_new_tokens and gpu.eval == cpu.eval  # the same evaluation
    assert f"{gpu.ppo.steps} PPO steps × {gpu.ppo.rollout_batch_size} prompts" in line
    assert ("bf16" in line) == bf16 or "no bf16" in line


def _quickstart(monkeypatch, cuda: bool, overrides: list[str]):
    seen = {}

    def fake_run(recipe, resume=False, overwrite=False):
        seen["recipe"] = recipe

    monkeypatch.setattr(ppo_recipe, "run", fake_run)
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: True)
    for var in ("ACCELERATE_MIXED_PRECISION", "CUDA_VISIBLE_DEVICES"):  # set first, so the teardown restores them
        monkeypatch.setenv(var, "placeholder")
        monkeypatch.delenv(var)
    args = argparse.Namespace(out=None, resume=False, overwrite=True, overrides=overrides)
    assert ppo_recipe.cmd_quickstart(args) == 0
    return seen["recipe"]


def test_quickstart_on_cpu_prints_the_budget_and_runs_the_recipe(monkeypatch, capsys):
    recipe = _quickstart(monkeypatch, cuda=False, overrides=[])
    assert recipe.ppo.steps == 12 and recipe.ppo.rollout_batch_size == 8
    assert capsys.readouterr().out.startswith("demo budget: CPU")
    import os

    assert "ACCELERATE_MIXED_PRECISION" not in os.environ


def test_quickstart_on_a_gpu_scales_up_and_the_users_setting_wins(monkeypatch, capsys):
    import os

    recipe = _quickstart(monkeypatch, cuda=True, overrides=["ppo.steps=5"])
    assert recipe.ppo.steps == 5 and recipe.ppo.rollout_batch_size == 8 * ppo_recipe.GPU_DEMO_SCALE
    assert "CUDA GPU" in capsys.readouterr().out
    assert os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16"
