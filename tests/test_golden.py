"""Golden runs, compared with stored numbers so a refactor that changes any of them is seen: two seeded PPO
steps of a tiny policy on fixed responses, two seeded VCB steps of a tiny policy on fixed candidates, and
`alarm compare` on fixed scored files. Regenerate (only for an intended change, and say why in the commit)
with ``ALARM_REGEN_GOLDEN=1 pytest tests/test_golden.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tiny
import torch

from alarm.cli import main
from alarm.combine import CombineConfig, RewardSet
from alarm.io import write_jsonl_atomic
from alarm.trainers.ppo import PPOConfig, PPOTrainer
from alarm.trainers.vcb import VCBConfig, VCBTrainer

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_ppo.json"
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


def same_as_stored(got: list[dict], path: Path) -> None:
    if os.environ.get("ALARM_REGEN_GOLDEN"):
        path.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(path.read_text())
    assert [sorted(m) for m in got] == [sorted(m) for m in expected]  # the same numbers, no more, no fewer
    for g, e in zip(got, expected):
        for k in e:
            if isinstance(e[k], float):
                assert g[k] == pytest.approx(e[k], rel=1e-3, abs=1e-5), k
            else:
                assert g[k] == e[k], k


def test_two_ppo_steps_give_the_stored_metrics(tmp_path):
    same_as_stored(run_two_steps(tmp_path), GOLDEN)


def test_two_vcb_steps_give_the_stored_metrics(tmp_path):
    """Three prompts × four fixed candidates with fixed rewards (one prompt held out as the test split), LoRA,
    four pairs a step in micro-batches of two; dropout is off, so the numbers do not hinge on sampling."""
    words = ["the quick", "brown fox", "Paris is", "capital", "water boils", "answer"]
    rows = [{"prompt_id": f"p{p}", "split": "train" if p < 2 else "test", "prompt": f"Question {p}: {words[p]}?",
             "candidate": f"{words[(p + c) % 6]} {words[(2 * c + 1) % 6]}", "reward": float(c + 0.5 * p)}
            for p in range(3) for c in range(4)]
    tr = VCBTrainer(VCBConfig(batch_size=4, micro_batch_size=2, max_steps=2, learning_rate=1e-2, seed=3,
                              eval_greedy=False), tiny.causal_lm(3), tiny.tokenizer(), rows, tmp_path)
    got = [{k: round(float(v), 6) for k, v in tr.step().items() if not k.startswith("time/")} for _ in range(2)]
    same_as_stored(got, DATA / "golden_vcb.json")


def _flat(d, prefix=""):
    """A nested result as {"a/b/c": number}: every number of it, so any change is seen."""
    if isinstance(d, dict):
        return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}{key}/").items()}
    if isinstance(d, list):
        return {k: v for i, sub in enumerate(d) for k, v in _flat(sub, f"{prefix}{i}/").items()}
    if isinstance(d, bool) or not isinstance(d, int | float):
        return {prefix.rstrip("/"): d} if isinstance(d, str | bool) or d is None else {}
    return {prefix.rstrip("/"): round(float(d), 6)}


def test_compare_on_fixed_scored_files_gives_the_stored_tables(tmp_path):
    """Three systems' scored files (12 prompts, a holistic score, an aspect and a lower-is-better error count),
    `alarm compare` with a seeded bootstrap: every number of compare.json as stored."""
    files = []
    for s, name in enumerate(("base", "ppo", "vcb")):
        rows = [{"prompt_id": str(i), "sample": 0, "prompt": f"q{i}", "completion": f"{name} answer {i}",
                 "scores": {"holistic": round(((7 * i + 3 * s) % 11) / 5 - 1 + 0.2 * s, 3),
                            "words": float((i * (s + 2)) % 9), "errors": float((i + 2 * s) % 4)}}
                for i in range(12)]
        files.append(write_jsonl_atomic(tmp_path / f"{name}.jsonl", rows))
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, files), "--lower-is-better", "errors", "--n-boot", "200", "--seed", "0",
                 "--out-dir", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    got = [{k: v for k, v in _flat(result).items() if str(tmp_path) not in str(v)}]
    same_as_stored(got, DATA / "golden_compare.json")
