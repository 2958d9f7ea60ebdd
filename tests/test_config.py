"""Recipe settings: validation names the bad key in one line; overrides (shipped recipes: test_recipes.py)."""

from pathlib import Path

import pytest

from alarm.cli import main
from alarm.config import load_recipe, parse_overrides
from alarm.errors import AlarmError


@pytest.mark.parametrize(("override", "key"), [
    ("ppo.learnig_rate=1e-4", "ppo.learnig_rate"),
    ("ppo.steps=many", "ppo.steps"),
    ("ppo.mini_batch_size=0", "ppo.mini_batch_size"),
    ("combine.mod=hierarchical", "combine.mod"),
    ("combine.mode=gated", "gated"),
    ("rewards.aspects.g={type: grounding, treshold: 0.5}", "rewards.aspects.g.treshold"),
    ("rewards.aspects.g={type: nope}", "rewards.aspects.g.type"),
    ("colour=blue", "colour"),
])
def test_bad_settings_fail_with_one_line_naming_the_key(override, key):
    with pytest.raises(AlarmError) as e:
        load_recipe(None, [override])
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_overrides_nest_and_parse_yaml_scalars():
    assert parse_overrides(["ppo.steps=3", "ppo.lora=false", "name=x"]) == {
        "ppo": {"steps": 3, "lora": False}, "name": "x"}
    r = load_recipe(None, ["ppo.steps=3", "combine.mode=weighted_sum"])
    assert r.ppo.steps == 3 and r.combine_config().mode == "weighted_sum"
    with pytest.raises(AlarmError, match="key=value"):
        parse_overrides(["ppo.steps"])


def test_mini_batch_larger_than_rollout_is_rejected():
    with pytest.raises(AlarmError, match="mini_batch_size"):
        load_recipe(None, ["ppo.rollout_batch_size=2", "ppo.mini_batch_size=4"])


def test_quickstart_recipe_keeps_the_papers_gate():
    r = load_recipe(Path(__file__).parents[1] / "recipes" / "quickstart.yaml")
    c = r.combine_config()
    assert (c.mode, c.holistic_weight, c.epsilon) == ("hierarchical", 5.0, 0.6)
    assert r.ppo.lora and r.ppo.lora_r == 16


def test_cli_prints_one_line_error_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("ppo:\n  stepz: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alarm: error: ppo.stepz") and "\n" not in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


# --- issue 18 item 6: the combine section validated like every other; exponent numbers everywhere


@pytest.mark.parametrize("override, message", [
    ("combine.holistic_weight=abc", "combine.holistic_weight: Input should be a valid number"),
    ("combine.aspect_weights.grounding=heavy", "combine.aspect_weights.grounding: Input should be a valid number"),
    ("combine.shape_aspects=maybe", "combine.shape_aspects: Input should be a valid boolean"),
])
def test_combine_settings_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(AlarmError, match=message) as e:
        load_recipe(None, [override])
    assert "\n" not in str(e.value)


def test_numbers_in_exponent_form_work_in_overrides_and_recipes(tmp_path):
    r = load_recipe(None, ["combine.holistic_weight=5e0", "combine.epsilon=-6E-1", "ppo.learning_rate=1e-5"])
    c = r.combine_config()
    assert (c.holistic_weight, c.epsilon, r.ppo.learning_rate) == (5.0, -0.6, 1e-5)
    assert isinstance(c.holistic_weight, float)
    p = tmp_path / "r.yaml"
    p.write_text("combine: {holistic_weight: 3e0, aspect_weights: {g: 2e-1}}\nppo: {learning_rate: 2e-5}\nname: 1e3x\n")
    r = load_recipe(p)
    assert (r.combine_config().holistic_weight, r.combine_config().weight("g"), r.ppo.learning_rate) == (3.0, 0.2, 2e-5)
    assert r.name == "1e3x"  # not a number: stays a string


@pytest.mark.parametrize("old", ["ppo.target_kl=0.3", "ppo.kl_target=2", "ppo.early_stop_kl_factor=1.5"])
def test_the_removed_spellings_of_the_kl_settings_are_refused(old):
    """One name per setting: the early stop is one threshold (early_stop_kl, the paper's 1.5 × 0.1 = 0.15)."""
    with pytest.raises(AlarmError, match="unknown setting") as e:
        load_recipe(None, [old])
    assert "early_stop_kl" in str(e.value) and "adaptive_kl_target" in str(e.value)
    assert load_recipe(None, []).ppo.early_stop_kl == pytest.approx(1.5 * 0.1)


@pytest.mark.parametrize(("override", "closest", "valid"), [
    ("ppo.learnig_rate=1e-4", "did you mean ppo.learning_rate?", "valid in ppo: seed, save_every, report_to, lora"),
    ("data.pth=x", "did you mean data.path?", "valid in data: task, path, train_split"),
    ("selection.max_conflct=0.3", "did you mean selection.max_conflict?", "valid in selection: enabled"),
    ("combine.mod=hierarchical", "did you mean combine.mode?", "valid in combine: aspect_scales"),
    ("rewards.aspects.g={type: grounding, treshold: 0.5}", "did you mean rewards.aspects.g.threshold?",
     "valid in rewards.aspects.g: column, name, threshold, value"),
    ("sede=3", "did you mean seed?", "valid: name, output_dir, seed"),
])
def test_an_unknown_key_names_the_closest_one_and_the_sections_valid_keys(override, closest, valid):
    with pytest.raises(AlarmError) as e:
        load_recipe(None, [override])
    msg = str(e.value)
    assert closest in msg and valid in msg and "\n" not in msg


def _settings_models():
    """Every pydantic model in the package, and the dataclass sections a recipe keeps as mappings."""
    import importlib
    import pkgutil

    import pydantic

    import alarm
    from alarm.config import SECTION_MODELS

    for info in pkgutil.walk_packages(alarm.__path__, "alarm."):
        importlib.import_module(info.name)
    found, todo = set(), [pydantic.BaseModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("alarm."):
                found.add(sub)
    return sorted(found, key=lambda c: c.__qualname__) + list(SECTION_MODELS.values())


def test_every_setting_of_every_settings_model_has_a_description():
    from alarm.config import settings_of

    models = _settings_models()
    names = {m.__name__ for m in models}
    assert {"Recipe", "VCBRecipe", "PPOConfig", "VCBConfig", "RMTrainConfig", "SFTConfig", "CombineConfig",
            "DataSpec", "VCBSampleSpec"} <= names
    missing = [f"{m.__name__}.{s.name}" for m in models for s in settings_of(m) if not (s.description or "").strip()]
    assert not missing, f"settings without a description: {missing}"


def test_the_run_seed_seeds_the_trainer_unless_its_section_sets_one(tmp_path):
    """`seed: 7` in a recipe used to leave ppo.seed / vcb.seed at 42: three "seeds" of a comparison trained with
    one PPO seed (initialisation, prompt order, sampling) and were copies of each other."""
    from alarm.recipes.vcb import load_vcb_recipe

    assert load_recipe(None, ["seed=7"]).ppo.seed == 7
    assert load_vcb_recipe(None, ["seed=7"]).vcb.seed == 7
    assert load_recipe(None, ["seed=7", "ppo.seed=3"]).ppo.seed == 3  # an explicit trainer seed is kept
    assert load_vcb_recipe(None, ["seed=7", "vcb.seed=3"]).vcb.seed == 3
    path = tmp_path / "r.yaml"
    path.write_text("seed: 5\nppo:\n  steps: 2\n")
    assert load_recipe(str(path)).ppo.seed == 5
