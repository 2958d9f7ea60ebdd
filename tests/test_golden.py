"""A golden PPO run: two seeded steps of a tiny policy on fixed responses, compared with stored metrics, so a
refactor that changes any number is seen. Regenerate (only for an intended change, and say why in the commit)
with ``ALARM_REGEN_GOLDEN=1 pytest tests/test_golden.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tiny
import torch

from alarm.combine import CombineConfig, RewardSet
from alarm.trainers.ppo import PPOConfig, PPOTrainer

GOLDEN = Path(__file__).parent / "data" / "golden_ppo.json"
PROMPTS = [{"prompt": p, "question": p} for p in ["The quick", "Paris is", "Water boils", "A question"]]


def e_rate(prompts, completions, **kw):
    return [c.count("e") / (1 + len(c)) for c in completions]


def sentences(prompts, completions, **kw):
    return [float(c.count(" ")) for c in completions]


def run_two_steps(tmp_path) -> list[dict]:
    tok = tiny.tokenizer()
    rs = RewardSet(CombineConfig(mode="hierarchical", holistic_weight=5.0, epsilon=0.0), holistic=e_rate,
                   aspects={"words": sentences})
    rs.fit(["a"] * 6, ["eee", "abc", "hello there", "x", "the end", "seven eleven"])
    tr = PPOTrainer(PPOConfig(max_new_tokens=6, rollout_batch_size=4, mini_batch_size=2, grad_accum_steps=1,
                              steps=2, learning_rate=1e-2, seed=3), tiny.causal_lm(3), tok, rs, PROMPTS, tmp_path)
    texts = ["the answer is here", "Paris is the capital", "e e e", "water"]
    ids = [tok(t, add_special_tokens=False)["input_ids"][:5] for t in texts]
    fixed = torch.tensor([row + [tok.eos_token_id] * (6 - len(row)) for row in ids])
    # Fixed responses: the numbers do not hinge on sampling (the rollout log-probs come from a forward pass).
    tr.generate = lambda batch, with_policy_outputs=False: (fixed, None) if with_policy_outputs else fixed
    out = []
    for _ in range(2):
        m = tr.step()
        out.append({k: round(float(v), 6) for k, v in m.items() if not k.startswith("time/")})
    return out


def test_two_ppo_steps_give_the_stored_metrics(tmp_path):
    got = run_two_steps(tmp_path)
    if os.environ.get("ALARM_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert [sorted(m) for m in got] == [sorted(m) for m in expected]  # the same metrics, no more, no fewer
    for g, e in zip(got, expected):
        for k in e:
            assert g[k] == pytest.approx(e[k], rel=1e-3, abs=1e-5), k
