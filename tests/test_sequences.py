"""alarm.trainers.sequences: dropout off in the RL passes (rollout and update, policy and reference agree:
PPO's ratio starts at 1, VCB's Δρ at 0), the LoRA + reference set-up."""

from __future__ import annotations

import tiny
import torch
from test_ppo import ppo

from alarm.trainers.ppo import PPOConfig
from alarm.trainers.vcb import VCBConfig, VCBTrainer, log_ratio_gap

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
