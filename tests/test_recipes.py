"""Every shipped recipe validates with the loader of its command family (one test for all of them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny

from alarm.config import load_recipe
from alarm.recipes.reward_models import load_config
from alarm.recipes.vcb import load_vcb_recipe

RECIPES = Path(__file__).parents[1] / "src" / "alarm" / "recipes"
LOADERS = {"rm_": load_config, "vcb_": load_vcb_recipe}  # by file-name prefix; the rest are PPO runs


def loader(path: Path):
    return next((f for prefix, f in LOADERS.items() if path.name.startswith(prefix)), load_recipe)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = loader(path)(path)
    assert recipe is not None


def test_the_recipe_list_is_what_ships():
    names = {p.name for p in RECIPES.glob("*.yaml")}
    assert {"quickstart.yaml", "qa_feedback_paper.yaml", "mt_paper.yaml", "vcb_quickstart.yaml",
            "rm_holistic.yaml", "vcb_hh.yaml", "vcb_tldr.yaml", "vcb_hh_offline.yaml",
            "vcb_tldr_offline.yaml"} <= names
    assert (Path(__file__).parents[1] / "recipes").resolve() == RECIPES.resolve()  # the top-level link


def test_paper_recipes_carry_the_paper_trainer_settings():
    from pathlib import Path

    from alarm.config import load_recipe
    from alarm.trainers.sequences import trainable_with_reference

    root = Path(__file__).parents[1] / "recipes"
    qa = load_recipe(root / "qa_feedback_paper.yaml")
    mt = load_recipe(root / "mt_paper.yaml")
    for r in (qa, mt):
        assert r.ppo.lora_target_modules == ["q", "v"] and r.ppo.weight_decay == 0.0
    assert qa.combine_config().aspect_scales == {"completeness": 0.3}
    assert (qa.ppo.rollout_batch_size, qa.ppo.mini_batch_size, qa.ppo.grad_accum_steps) == (8, 4, 2)
    assert (mt.ppo.rollout_batch_size, mt.ppo.mini_batch_size, mt.ppo.grad_accum_steps) == (32, 16, 2)
    assert qa.combine_config().empty_return == -50.0 and mt.combine_config().empty_return == -30.0
    # On a T5 those targets adapt exactly the query and value projections, as peft 0.5 did by default.
    model, _ = trainable_with_reference(tiny.seq2seq_lm(), qa.ppo)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q", "v"}
