"""Every shipped recipe validates with the loader of its command family (one test for all of them)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
            "rm_holistic.yaml"} <= names
    assert (Path(__file__).parents[1] / "recipes").resolve() == RECIPES.resolve()  # the top-level link
