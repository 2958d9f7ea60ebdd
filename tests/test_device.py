"""The device-sensitive tests: PPO steps and reward models on the device in ``ALARM_TEST_DEVICE`` (default cpu).

``benchmarks/gpu_check.sh`` runs this file with ``ALARM_TEST_DEVICE=cuda``; in the normal suite it runs on the
CPU. What can differ on a GPU: dtype handling (bf16 policies sample with adapters unmerged and take their
rollout log-probs from the update's own forward pass), tensors left on the wrong device (prompt batches,
reward vectors, the value head), and reward models scoring on another device than their inputs.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import pytest
import tiny
import torch

from alarm.combine import CombineConfig, HierarchyWarning, RewardSet
from alarm.rewards.base import FunctionReward

DEVICE = os.environ.get("ALARM_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip(f"ALARM_TEST_DEVICE={DEVICE} but torch sees no CUDA device", allow_module_level=True)


def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=DEVICE == "cpu")


def reward_set():
    warnings.simplefilter("ignore", HierarchyWarning)
    rs = RewardSet(CombineConfig(mode="hierarchical", epsilon=0.0),
                   holistic=FunctionReward(lambda p, c, **k: [float(len(x)) for x in c], name="chars"),
                   aspects={"e": FunctionReward(lambda p, c, **k: [float(x.count("e")) for x in c], name="e")})
    rs.fit(["q"] * 4, ["a", "bb b", "ccc cc", "dddd ee d"])
    return rs


PROMPTS = [{"prompt": p} for p in ["The quick", "Paris is", "Water boils", "A question:"]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ppo_step_on_the_device(tmp_path, dtype):
    from alarm.trainers.ppo import PPOConfig, PPOTrainer

    if dtype == torch.bfloat16 and DEVICE.startswith("cuda") and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = tiny.causal_lm().to(dtype)
    cfg = PPOConfig(max_new_tokens=8, rollout_batch_size=4, mini_batch_size=2, grad_accum_steps=1, ppo_epochs=1,
                    steps=2, learning_rate=1e-3, lora=True, lora_r=4, lora_alpha=8)
    tr = PPOTrainer(cfg, model, tiny.tokenizer(), reward_set(), PROMPTS, tmp_path, accelerator=accelerator())
    assert tr.accelerator.device.type == torch.device(DEVICE).type
    seen = {}
    make_experience = tr.make_experience

    def recording(*a, **k):
        exp, info = make_experience(*a, **k)
        seen.setdefault("exp", exp)
        seen.setdefault("combined", info["combined"])
        return exp, info

    tr.make_experience = recording
    metrics = tr.train(progress=False)
    assert len(metrics) == 2
    for m in metrics:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
    # The first epoch of the first step starts from the rollout policy itself: ratio 1, approximate KL ~ 0.
    assert metrics[0]["ppo/approx_kl"] < (1e-3 if dtype == torch.float32 else 5e-3)
    exp, combined = seen["exp"], seen["combined"]
    assert exp.responses.device.type == torch.device(DEVICE).type
    # the rewards reaching GAE are what the combination assigned (scores), on the generated positions only
    assigned = torch.tensor([float(r.sum()) for r in combined.token_rewards])
    assert torch.allclose(exp.scores.sum(1).cpu().double(), assigned.double(), atol=1e-4)
    assert float((exp.scores * (1 - exp.mask)).abs().sum()) == 0.0
    lora = [p for n, p in tr.unwrapped.model.named_parameters() if "lora_" in n]
    assert lora and all(p.device.type == torch.device(DEVICE).type for p in lora)
    assert tr.unwrapped.value_head.weight.device.type == torch.device(DEVICE).type


def _sequence_rm(seed=0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny.tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id,
                      max_position_embeddings=256)
    return LlamaForSequenceClassification(cfg).eval()


COMPLETIONS = ["Paris is the capital of France.", "The answer is forty-two!", "", "Water boils at 100 degrees."]


def test_reward_model_on_the_device_scores_as_on_the_cpu():
    from alarm.rewards.hf_models import SequenceClassifierReward

    tok = tiny.tokenizer()
    prompts = ["A question: what is it?"] * len(COMPLETIONS)
    cpu = SequenceClassifierReward(_sequence_rm(), tok, batch_size=3, max_length=128)
    dev = SequenceClassifierReward(_sequence_rm().to(DEVICE), tok, batch_size=3, max_length=128)
    assert next(dev.model.parameters()).device.type == torch.device(DEVICE).type
    assert dev(prompts, COMPLETIONS) == pytest.approx(cpu(prompts, COMPLETIONS), abs=1e-4)


def test_served_reward_model_on_the_device_answers_every_client():
    import requests

    from alarm.integrations.serve import RewardServer
    from alarm.rewards.hf_models import SequenceClassifierReward

    tok = tiny.tokenizer()
    rm = SequenceClassifierReward(_sequence_rm().to(DEVICE), tok, batch_size=4, max_length=128, name="rm")
    rs = RewardSet(CombineConfig(mode="holistic_only", holistic_weight=1.0), holistic=rm)
    rs.fit(["q"] * len(COMPLETIONS), COMPLETIONS)
    prompts = ["A question: "] * len(COMPLETIONS)
    with RewardServer(rs, port=0) as srv:
        resp = requests.post(srv.url + "/get_reward", timeout=30, data=json.dumps(
            {"query": [p + c for p, c in zip(prompts, COMPLETIONS)], "prompts": prompts}))
    assert resp.status_code == 200, resp.text
    assert resp.json()["rewards"] == pytest.approx(rs.sequence_rewards(prompts, COMPLETIONS)[0], abs=1e-5)
