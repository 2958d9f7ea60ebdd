"""Configurations the default recipes do not exercise: dropout, sampling temperature, low precision, the
ratio safety valve (issue 13). Each test failed on the code before its fix."""

from __future__ import annotations

import pytest
import tiny
import torch

from alarm.combine import CombineConfig, RewardSet
from alarm.trainers.ppo import PPOConfig, PPOTrainer, logprobs_from_logits, trim_padding
from alarm.trainers.vcb import VCBConfig, VCBTrainer, log_ratio_gap

PROMPTS = [{"prompt": p} for p in ["The quick", "Paris is", "Water boils", "A question", "The answer", "Café"]]


def e_rate(prompts, completions, **kw):
    return [c.count("e") / (1 + len(c)) for c in completions]


def reward_set():
    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=e_rate)
    rs.fit(["a"] * 4, ["eee", "abc", "hello there", "x"])
    return rs


def ppo(tmp_path, model, **cfg):
    base = dict(max_new_tokens=8, rollout_batch_size=4, mini_batch_size=2, grad_accum_steps=1, steps=1,
                learning_rate=1e-3)
    return PPOTrainer(PPOConfig(**{**base, **cfg}), model, tiny.tokenizer(), reward_set(), PROMPTS, tmp_path)


def nonzero_adapters(trainer, std=0.05):
    """LoRA B is 0 at initialisation (policy = reference); give it values so the adapters matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in trainer.unwrapped.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std)


def start_of_update_ratio(trainer, exp):
    """π/π_old per token at the start of the update: the update's own forward pass (train mode, trimmed)."""
    trainer.policy.train()
    mb = trim_padding(exp)
    with torch.no_grad():
        logits, _ = trainer.policy(mb)
    logprobs = logprobs_from_logits(trainer._tempered(logits), mb["responses"])
    return torch.exp(logprobs - mb["old_logprobs"]), mb["mask"]


# ---------------------------------------------------------------------------------------------- 1. dropout


def test_t5_with_dropout_runs_every_epoch_with_no_kl_before_learning(tmp_path):
    model = tiny.seq2seq_lm()
    assert model.config.dropout_rate == 0.1  # the paper's T5 policies train with dropout 0.1
    tr = ppo(tmp_path, model, ppo_epochs=4, learning_rate=1e-12)
    m = tr.step()
    assert m["ppo/epochs"] == 4 and m["ppo/early_stopped"] == 0
    assert m["ppo/approx_kl"] < 1e-4 and m["ppo/clipfrac"] == 0


def test_dropout_can_be_kept_on_and_then_it_is_noise(tmp_path):
    tr = ppo(tmp_path, tiny.seq2seq_lm(), ppo_epochs=4, learning_rate=1e-12, disable_dropout=False)
    m = tr.step()
    assert m["ppo/approx_kl"] > 1e-3  # two passes of the same weights disagree: what the default avoids


def test_disable_dropout_covers_attention_rates_and_lora():
    from alarm.trainers.sequences import disable_dropout, trainable_with_reference

    model = tiny.causal_lm()
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.2  # Llama keeps it as a float, not a module
    model, _ = trainable_with_reference(model, PPOConfig(lora_dropout=0.3))
    assert disable_dropout(model) == 0  # nothing left on, LoRA's dropout included
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.base_model.model.model.layers)


def test_vcb_delta_rho_is_zero_at_initialisation_with_dropout(tmp_path):
    rows = []
    for p in range(3):
        for c in range(4):
            rows.append({"prompt_id": f"p{p}", "split": "train", "prompt": f"Question {p}: the quick?",
                         "candidate": ["the quick", "brown fox", "Paris is", "water boils"][c],
                         "reward": float(c)})
    tr = VCBTrainer(VCBConfig(batch_size=8, micro_batch_size=4, max_steps=1, eval_greedy=False,
                              learning_rate=1e-12), tiny.seq2seq_lm(), tiny.tokenizer(), rows, tmp_path)
    ref = tr.reference_logprobs()
    tr.policy.train()  # as in VCBTrainer.step
    i, j = [p[0] for p in tr.pairs], [p[1] for p in tr.pairs]
    with torch.no_grad():
        logps = tr.policy(tr.collate(i + j))
    drho = log_ratio_gap(logps[: len(i)], ref[i], logps[len(i):], ref[j])
    assert float(drho.abs().max()) < 1e-4
    assert abs(tr.step()["beta_delta_rho/mean"]) < 1e-5


# ------------------------------------------------------------------------------------- 9. temperature


def test_old_logprobs_are_those_of_the_tempered_sampling_distribution(tmp_path):
    tr = ppo(tmp_path, tiny.causal_lm(), temperature=0.7)
    nonzero_adapters(tr)
    records = tr.prompt_batch(0)
    batch = tr.encode_prompts(records)
    responses, outputs = tr.generate(batch, with_policy_outputs=True)
    exp, _ = tr.make_experience(records, batch, responses, outputs)
    tr.policy.eval()
    with torch.no_grad():
        raw, _ = tr.policy(exp)
    sampled = torch.log_softmax(raw.float() / 0.7, -1).gather(-1, exp["responses"].unsqueeze(-1)).squeeze(-1)
    mask = exp["mask"]
    torch.testing.assert_close(exp["old_logprobs"], sampled * mask, atol=1e-5, rtol=0)
    ratio, m = start_of_update_ratio(tr, exp)
    assert float(((ratio - 1).abs() * m).max()) < 1e-5


# ------------------------------------------------------------------------------------ 10. low precision


def test_bf16_policy_starts_the_update_at_ratio_one(tmp_path):
    tr = ppo(tmp_path, tiny.causal_lm().to(torch.bfloat16), ppo_epochs=1, mini_batch_size=4,
             learning_rate=1e-12, max_new_tokens=12)
    nonzero_adapters(tr, std=0.002)  # small adapter updates: what merging into bf16 weights would round away
    assert not tr.unwrapped.full_precision
    # The sampling pass must not merge adapters into bf16 weights: base weights stay as they were.
    base = {n: p.detach().clone() for n, p in tr.unwrapped.model.named_parameters() if "base_layer" in n}
    m = tr.step()
    assert all(torch.equal(p, base[n]) for n, p in tr.unwrapped.model.named_parameters() if n in base)
    assert m["ppo/approx_kl"] < 1e-9 and m["ppo/clipfrac"] == 0


def test_full_precision_policy_still_reuses_the_sampling_pass(tmp_path):
    tr = ppo(tmp_path, tiny.causal_lm())
    assert tr.unwrapped.full_precision
    calls = []
    original = tr.unwrapped.forward
    tr.unwrapped.forward = lambda *a, **k: (calls.append(k.get("reference", False)), original(*a, **k))[1]
    records = tr.prompt_batch(0)
    batch = tr.encode_prompts(records)
    responses, outputs = tr.generate(batch, with_policy_outputs=True)
    tr.make_experience(records, batch, responses, outputs)
    assert calls == [True]  # only the reference pass; the policy's log-probs came from sampling


# -------------------------------------------------------------------------------- 7. ratio safety valve


def _diverged_experience(tr):
    records = tr.prompt_batch(0)
    batch = tr.encode_prompts(records)
    responses, outputs = tr.generate(batch, with_policy_outputs=True)
    exp, _ = tr.make_experience(records, batch, responses, outputs)
    exp["old_logprobs"] = (exp["old_logprobs"] - 5.0) * exp["mask"]  # ratio e^5 ≈ 148 on every token
    return exp


@pytest.mark.parametrize("threshold", [10.0, None])
def test_mini_batches_with_a_runaway_ratio_are_skipped_and_counted(tmp_path, threshold):
    tr = ppo(tmp_path, tiny.causal_lm(), ppo_epochs=1, ratio_threshold=threshold, early_stop_kl_factor=1e9)
    nonzero_adapters(tr)
    exp = _diverged_experience(tr)
    before = [p.detach().clone() for p in tr.unwrapped.parameters() if p.requires_grad]
    stats = tr.update(exp)
    after = [p.detach() for p in tr.unwrapped.parameters() if p.requires_grad]
    changed = any(not torch.equal(a, b) for a, b in zip(after, before))
    if threshold is None:
        assert changed and stats["ppo/skipped_minibatches"] == 0
    else:
        assert not changed and stats["ppo/skipped_minibatches"] == 2  # 4 responses / mini-batch 2


def test_ratio_threshold_must_exceed_one():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        PPOConfig(ratio_threshold=0.9)


def test_ppo_and_vcb_default_to_plain_adam(tmp_path):
    tr = ppo(tmp_path, tiny.causal_lm())
    assert all(g["weight_decay"] == 0.0 for g in tr.optimizer.param_groups)
    assert VCBConfig().weight_decay == 0.0



# --------------------------------------------------------------------------------- 2. empty responses


def test_default_empty_penalty_is_below_every_real_answer():
    import warnings

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from alarm.combine import HierarchyWarning, combine

    @settings(max_examples=60, deadline=None)
    @given(w_h=st.floats(0.1, 10.0), h=st.floats(-9.99, 10.0), mode=st.sampled_from(
        ["hierarchical", "holistic_only", "weighted_sum"]), a=st.floats(-20, 20))
    def check(w_h, h, mode, a):
        config = CombineConfig(mode=mode, holistic_weight=w_h, epsilon=0.6)
        out = combine(config, ["a real answer", ""], [[2, 6, 13], [0]], [h, None], {"fact": [a, None]})
        assert out.returns[1] < out.returns[0]
        assert out.returns[1] == config.empty_return

    check()
    assert CombineConfig(holistic_weight=5.0).empty_return == -50.0  # the paper: QA −50, MT −30
    assert CombineConfig(holistic_weight=3.0).empty_return == -30.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", HierarchyWarning)
        RewardSet(CombineConfig(), holistic=e_rate)  # the default configuration warns about nothing


def test_a_penalty_inside_the_return_range_is_named_in_the_warnings():
    from alarm.combine import HierarchyWarning

    with pytest.warns(HierarchyWarning, match=r"empty_penalty -5 is above the return of a real answer with h < -1\.00"):
        rs = RewardSet(CombineConfig(mode="holistic_only", empty_penalty=-5.0), holistic=e_rate)
    completions = ["eeee", "eee", "eeeee", "ee", "eeeeee", "xyz"]  # "xyz" lies ~2 std below the rest
    with pytest.warns(HierarchyWarning, match=r"above the holistic return w_h·h of \d+ of 6 initial-policy answers"):
        rs.fit(["q"] * 6, completions)


# ------------------------------------------------------------------------------------- 6. normalisers


def test_epsilon_on_an_unnormalised_holistic_reward_warns():
    from alarm.combine import HierarchyWarning

    with pytest.warns(HierarchyWarning, match="epsilon 0.6 is a z value but the holistic reward is not normalised"):
        RewardSet(CombineConfig(mode="hierarchical"), holistic=e_rate, normalize=())


def test_combine_called_directly_with_a_quantile_needs_epsilon():
    from alarm.combine import combine, resolve_epsilon
    from alarm.errors import AlarmError

    config = CombineConfig(mode="hierarchical", epsilon_quantile=0.9)
    with pytest.raises(AlarmError, match="epsilon_quantile needs the initial policy's holistic scores"):
        combine(config, ["ab"], [[1, 2]], [0.7], {})
    eps = resolve_epsilon(config, [0.0, 1.0, 2.0])
    assert combine(config, ["ab"], [[1, 2]], [0.7], {"a": [1.0]}, epsilon=eps).gate_open == [False]


def test_a_constant_reward_cannot_be_fitted_through_the_reward_set():
    from alarm.errors import AlarmError

    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=lambda p, c, **k: [3.0] * len(c))
    with pytest.raises(AlarmError, match="'holistic' is constant on the 4 fitting samples"):
        rs.fit(["q"] * 4, ["a", "b", "c", "d"])


# ------------------------------------------------------------------------ 8. the paper's settings


def test_aspect_scale_shapes_inside_the_logistic():
    from alarm.combine import combine, logistic

    config = CombineConfig(mode="weighted_sum", holistic_weight=1.0, aspect_scales={"completeness": 0.3})
    out = combine(config, ["ab"], [[1, 2]], [0.0], {"completeness": [2.0], "fact": [2.0]})
    assert float(out.token_rewards[0][-1]) == pytest.approx(logistic(0.6) + logistic(2.0))
    from alarm.errors import AlarmError

    with pytest.raises(AlarmError, match="aspect_scales.completeness must be > 0"):
        CombineConfig(aspect_scales={"completeness": 0.0})


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
