"""Same pass, same precision under autocast: with accelerate's bf16 mixed precision (the shipped ddp.yaml) the
reference and update passes run under autocast, so the rollout's old log-probs and values must come from a
pass in that precision too, not from the fp32 sampling pass. At policy = reference the PPO ratio starts at
exactly 1 and the KL is exactly 0, with and without the frozen-trunk replay."""

from __future__ import annotations

import pytest
import tiny
import torch

from alarm.trainers.ppo import PPOConfig, PPOTrainer


@pytest.fixture
def bf16_accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)  # the state is a process-wide singleton
    GradientState._reset_state()
    yield Accelerator(mixed_precision="bf16", cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize("layers, lora_layers", [(2, None), (4, [2, 3])], ids=["whole", "frozen-trunk-replay"])
def test_under_bf16_autocast_the_ratio_starts_at_one_and_the_kl_is_zero(tmp_path, bf16_accelerator, layers,
                                                                       lora_layers):
    from test_ppo import PROMPTS, holistic_only_set

    cfg = PPOConfig(max_new_tokens=8, rollout_batch_size=4, mini_batch_size=4, grad_accum_steps=1, steps=1,
                    learning_rate=1e-3, ppo_epochs=1, lora_layers=lora_layers)
    tr = PPOTrainer(cfg, tiny.causal_lm(layers=layers), tiny.tokenizer(), holistic_only_set(), PROMPTS, tmp_path,
                    accelerator=bf16_accelerator)
    assert (tr.unwrapped.trunk_depth > 0) == (lora_layers is not None)
    made = []
    make_experience = tr.make_experience
    tr.make_experience = lambda *a, **k: made.append(make_experience(*a, **k)) or made[-1]
    torch.manual_seed(0)
    m = tr.step()  # the rollout as training makes it, then one mini-batch update from policy = reference
    exp, info = made[0]
    assert (exp.trunk_prompt is not None) == (lora_layers is not None)
    mask = exp.mask
    assert torch.equal(exp.old_logprobs * mask, exp.ref_logprobs * mask)  # KL exactly 0 at policy = ref
    assert info["kl_seq"] == 0.0 and m["kl"] == 0.0
    assert m["ppo/approx_kl"] == 0.0 and m["ppo/clipfrac"] == 0.0  # the update's first ratio is exactly 1
    assert tr.unwrapped.full_precision and not tr.sampling_pass_is_exact  # fp32 weights, bf16 passes


def test_without_mixed_precision_fp32_still_reuses_the_sampling_pass(tmp_path):
    from test_ppo import PROMPTS, holistic_only_set

    tr = PPOTrainer(PPOConfig(max_new_tokens=8, rollout_batch_size=4, mini_batch_size=4, steps=1),
                    tiny.causal_lm(), tiny.tokenizer(), holistic_only_set(), PROMPTS, tmp_path)
    assert tr.accelerator.mixed_precision == "no" and tr.sampling_pass_is_exact
