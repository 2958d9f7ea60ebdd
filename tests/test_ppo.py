"""PPO trainer: reward alignment, gradient flow, GAE/loss math, learning, seq2seq, resume, multi-process."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import tiny
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alarm.combine import CombineConfig, RewardSet
from alarm.trainers.ppo import (
    KLController,
    PPOConfig,
    PPOTrainer,
    gae,
    leave_one_out_mean,
    logprobs_from_logits,
    masked_whiten,
    policy_loss,
    response_mask,
    trim_padding,
    value_loss,
)
from alarm.trainers.sequences import Sequences

PROMPTS = [{"prompt": p} for p in ["The quick", "Paris is", "Water boils", "A question", "The answer", "Café"]]


def e_rate(prompts, completions, **kw):
    return [c.count("e") / (1 + len(c)) for c in completions]


def nonempty(prompts, completions, **kw):
    return [float(len(c) > 3) for c in completions]


def reward_set(mode="hierarchical", **kw):
    rs = RewardSet(CombineConfig(mode=mode, **kw), holistic=e_rate, aspects={"long": nonempty})
    rs.fit(["a"] * 4, ["eee", "abc", "hello there", "x"])
    return rs


def trainer(tmp_path, model=None, rs=None, **cfg):
    base = dict(max_new_tokens=8, rollout_batch_size=3, mini_batch_size=2, grad_accum_steps=1, steps=2,
                learning_rate=1e-3)
    base.update(cfg)
    return PPOTrainer(PPOConfig(**base), model or tiny.causal_lm(), tiny.tokenizer(), rs or reward_set(), PROMPTS,
                      tmp_path)


# ---------------------------------------------------------------- rewards land where they were assigned


def crafted_responses(tok, T=6):
    """Row 0 ends with EOS mid-way then padding; row 1 hits max length without EOS; row 2 is empty (EOS only)."""
    ids = tok("the answer is here")["input_ids"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    rows = [ids[:3] + [eos] + [pad] * (T - 4), (ids * 3)[:T], [eos] + [pad] * (T - 1)]
    return torch.tensor(rows)


@pytest.mark.parametrize("mode", ["hierarchical", "weighted_sum", "holistic_only", "aspect_only"])
def test_rewards_reaching_gae_sum_to_what_combination_assigned(tmp_path, mode):
    tr = trainer(tmp_path, rs=reward_set(mode=mode, epsilon=-10.0))
    tr.kl.value = 0.37
    records = PROMPTS[:3]
    batch = tr.encode_prompts(records)
    responses = crafted_responses(tr.tokenizer)
    exp, info = tr.make_experience(records, batch, responses)
    lengths = exp.mask.sum(1).long().tolist()
    assert lengths == [4, 6, 1]
    combined = info["combined"]
    assert combined.empty == [False, False, True]
    kl = exp.old_logprobs - exp.ref_logprobs
    reached = (exp.rewards + tr.kl.value * kl * exp.mask).sum(1)
    assigned = torch.tensor([float(r.sum()) for r in combined.token_rewards], dtype=torch.float64)
    torch.testing.assert_close(reached.double(), assigned, atol=1e-5, rtol=0)
    # The sequence-level part sits on each response's own last generated token, never on padding.
    for i, n in enumerate(lengths):
        assert torch.all(exp.scores[i, n:] == 0)
        assert float(exp.scores[i, n - 1]) == pytest.approx(float(combined.token_rewards[i][-1]), abs=1e-6)
    assert float(exp.scores[2, 0]) == pytest.approx(CombineConfig().empty_return)
    assert info["texts"][2] == ""


def test_response_mask_stops_after_first_eos():
    r = torch.tensor([[5, 6, 1, 1, 1], [1, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
    assert response_mask(r, 1).tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert response_mask(r, [9, 6]).tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


# ---------------------------------------------------------------- gradient flow


def test_first_token_gets_gradient_and_padding_none(tmp_path):
    tr = trainer(tmp_path, lora=False)
    records = PROMPTS[:3]
    batch = tr.encode_prompts(records)
    exp, _ = tr.make_experience(records, batch, crafted_responses(tr.tokenizer))
    policy = tr.unwrapped
    params = [p for p in policy.model.parameters() if p.requires_grad]

    def grad_norm(adv):
        policy.zero_grad()
        logits, _ = policy(exp)
        from alarm.trainers.ppo import logprobs_from_logits
        lp = logprobs_from_logits(logits, exp.responses)
        loss, _, _ = policy_loss(lp, exp.old_logprobs, adv, exp.mask, 0.2)
        loss.backward()
        return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)

    first_only = torch.zeros_like(exp.advantages)
    first_only[:, 0] = 1.0
    assert grad_norm(first_only) > 0
    padding_only = torch.zeros_like(exp.advantages)
    padding_only[0, 4:] = 1.0  # row 0 ends at position 3 (its EOS)
    padding_only[2, 1:] = 1.0
    assert grad_norm(padding_only) == 0.0


# ---------------------------------------------------------------- math against loop references


def gae_reference(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_v = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * next_v - float(values[b, t])
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + values.double()) * mask.double()


lengths_st = st.lists(st.integers(1, 7), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, gamma=st.floats(0.5, 1.0), lam=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_gae_matches_loop_reference(lengths, gamma, lam, seed):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)
    rewards = torch.randn(len(lengths), T, generator=g, dtype=torch.float64) * mask
    values = torch.randn(len(lengths), T, generator=g, dtype=torch.float64) * mask
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, clip=st.floats(0.05, 0.5), seed=st.integers(0, 10_000))
def test_losses_match_loop_reference(lengths, clip, seed):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    B = len(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)
    new, old = torch.randn(B, T, generator=g, dtype=torch.float64), torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    v, v_old, ret = (torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(3))
    pg, _, kl = policy_loss(new, old, adv, mask, clip)
    vf, _ = value_loss(v, v_old, ret, mask, clip)
    pg_terms, vf_terms, kl_terms = [], [], []
    import math
    for b in range(B):
        for t in range(lengths[b]):
            ratio = math.exp(float(new[b, t] - old[b, t]))
            a = float(adv[b, t])
            pg_terms.append(max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)))
            vc = float(v_old[b, t]) + min(max(float(v[b, t] - v_old[b, t]), -clip), clip)
            vf_terms.append(0.5 * max((float(v[b, t]) - float(ret[b, t])) ** 2, (vc - float(ret[b, t])) ** 2))
            kl_terms.append(ratio - 1 - math.log(ratio))
    assert float(pg) == pytest.approx(sum(pg_terms) / len(pg_terms), rel=1e-9, abs=1e-9)
    assert float(vf) == pytest.approx(sum(vf_terms) / len(vf_terms), rel=1e-9, abs=1e-9)
    assert float(kl) == pytest.approx(sum(kl_terms) / len(kl_terms), rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 10_000))
def test_masked_whiten_uses_only_masked_entries(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)
    x = torch.randn(len(lengths), T, generator=g, dtype=torch.float64) * 3 + 1
    x_noisy = x + (1 - mask) * 1e6  # garbage on padding must not matter
    w = masked_whiten(x_noisy, mask)
    assert torch.all(w[mask == 0] == 0)
    vals = x[mask == 1]
    if vals.numel() > 1:
        expected = (vals - vals.mean()) / torch.sqrt(vals.var() + 1e-8)
        torch.testing.assert_close(w[mask == 1], expected)


def test_adaptive_kl_controller_follows_formula():
    c = KLController(0.2, True, target=6.0, horizon=10_000)
    c.update(kl=12.0, n=8)  # error clipped to +0.2
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 8 / 10_000))
    c2 = KLController(0.2, True, 6.0, 10_000)
    c2.update(kl=5.4, n=100)  # error −0.1
    assert c2.value == pytest.approx(0.2 * (1 - 0.1 * 100 / 10_000))
    fixed = KLController(0.2, False)
    fixed.update(100.0, 8)
    assert fixed.value == 0.2


# ---------------------------------------------------------------- several samples per prompt, RLOO's baseline


def test_each_prompt_is_sampled_k_times_in_a_row_and_a_pass_still_covers_every_prompt(tmp_path):
    tr = trainer(tmp_path, rollout_batch_size=4, mini_batch_size=2, samples_per_prompt=2)
    batches = [[r["prompt"] for r in tr.prompt_batch(step)] for step in range(3)]
    for b in batches:
        assert len(b) == 4 and b[0] == b[1] and b[2] == b[3] and b[0] != b[2]
    assert sorted(p for b in batches for p in b[::2]) == sorted(r["prompt"] for r in PROMPTS)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.integers(1, 4), st.integers(0, 10_000))
def test_leave_one_out_baseline_removes_each_questions_level(k, groups, seed):
    g = torch.Generator().manual_seed(seed)
    totals = torch.randn(groups * k, generator=g, dtype=torch.float64)
    shift = torch.randn(groups, generator=g, dtype=torch.float64).repeat_interleave(k)
    centred = totals - leave_one_out_mean(totals, k)
    # a constant added to every answer of one question (its difficulty) does not change what the update sees
    torch.testing.assert_close(centred, (totals + shift) - leave_one_out_mean(totals + shift, k))
    # within a question the centred returns sum to zero, and entry i's baseline never reads entry i
    torch.testing.assert_close(centred.reshape(groups, k).sum(1), torch.zeros(groups, dtype=torch.float64))
    bumped = totals.clone()
    bumped[0] += 3.0
    assert float(leave_one_out_mean(bumped, k)[0]) == pytest.approx(float(leave_one_out_mean(totals, k)[0]))
    assert leave_one_out_mean(bumped, k)[1] == pytest.approx(float(leave_one_out_mean(totals, k)[1]) + 3.0 / (k - 1))


def test_group_baseline_subtracts_the_other_answers_mean_return_on_the_last_token(tmp_path):
    tr = trainer(tmp_path, rs=reward_set(mode="weighted_sum"), rollout_batch_size=4, mini_batch_size=2,
                 samples_per_prompt=2, group_baseline=True)
    tr.kl.value = 0.3
    records = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    batch = tr.encode_prompts(records)
    tok = tr.tokenizer
    ids, eos, pad = tok("the answer is here")["input_ids"], tok.eos_token_id, tok.pad_token_id
    responses = torch.tensor([ids[:3] + [eos, pad, pad], (ids * 3)[:6], ids[:1] + [eos] + [pad] * 4, (ids * 2)[:6]])
    exp, info = tr.make_experience(records, batch, responses)
    assigned = torch.tensor([float(r.sum()) for r in info["combined"].token_rewards])
    assert assigned[0] != assigned[1] and assigned[2] != assigned[3]
    kl = (exp.old_logprobs - exp.ref_logprobs) * exp.mask
    reached = (exp.rewards + tr.kl.value * kl).sum(1)
    other = assigned.reshape(2, 2).flip(1).reshape(-1)  # k = 2: the baseline is the other answer's return
    torch.testing.assert_close(reached, assigned - other, atol=1e-5, rtol=0)
    lengths = exp.mask.sum(1).long().tolist()
    shifted = exp.rewards + tr.kl.value * kl - exp.scores  # only the last generated token moves
    for i, n in enumerate(lengths):
        assert torch.all(shifted[i, : n - 1].abs() < 1e-6) and float(shifted[i, n - 1]) == pytest.approx(-float(other[i]), abs=1e-5)
    torch.testing.assert_close(exp.scores.sum(1), assigned, atol=1e-5, rtol=0)  # metrics keep raw scores


def test_a_zero_critic_starts_from_advantages_that_carry_only_the_reward(tmp_path):
    """A random value head adds δ_t = V_{t+1} − V_t noise to every token's advantage before it has learnt;
    ``value_head_init: zeros`` starts at V = 0, so the first advantages are the λ-discounted rewards alone."""
    tr = trainer(tmp_path, value_head_init="zeros", whiten_advantages=False, kl_coef=0.0, adaptive_kl=False)
    records = PROMPTS[:3]
    exp, _ = tr.make_experience(records, tr.encode_prompts(records), crafted_responses(tr.tokenizer))
    assert torch.all(exp.old_values == 0)
    expected, _ = gae(exp.rewards, torch.zeros_like(exp.rewards), exp.mask, 1.0, tr.config.lam)
    torch.testing.assert_close(exp.advantages, expected)
    tr.update(exp)
    assert tr.unwrapped.value_head.weight.abs().sum() > 0  # and the critic still learns
    noisy = trainer(tmp_path / "n", whiten_advantages=False, kl_coef=0.0, adaptive_kl=False)
    exp2, _ = noisy.make_experience(records, noisy.encode_prompts(records), crafted_responses(noisy.tokenizer))
    assert exp2.old_values.abs().sum() > 0  # the default keeps the paper trainer's random head


def test_group_settings_are_checked():
    with pytest.raises(ValueError, match="multiple of samples_per_prompt"):
        PPOConfig(rollout_batch_size=6, mini_batch_size=2, samples_per_prompt=4)
    with pytest.raises(ValueError, match="group_baseline needs samples_per_prompt"):
        PPOConfig(group_baseline=True)


# ---------------------------------------------------------------- learning and both architectures


def test_policy_learns_to_emit_a_rewarded_token(tmp_path):
    """Reward = share of 'e' characters; a tiny policy's mean reward must rise clearly."""
    rs = RewardSet(CombineConfig(mode="holistic_only", holistic_weight=1.0), holistic=e_rate)
    rs.fit(["a"] * 4, ["eee", "abc", "hello there", "x"])
    tr = trainer(tmp_path, rs=rs, lora=False, learning_rate=1e-2, rollout_batch_size=8, mini_batch_size=4,
                 max_new_tokens=6, kl_coef=0.0, steps=25, ppo_epochs=4, seed=1)
    hist = tr.train(progress=False)
    first = sum(m["rewards/holistic/mean"] for m in hist[:5]) / 5
    last = sum(m["rewards/holistic/mean"] for m in hist[-5:]) / 5
    assert last > first + 0.8, (first, last)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_full_step_changes_parameters(tmp_path, kind):
    model = tiny.causal_lm() if kind == "causal" else tiny.seq2seq_lm()
    tr = trainer(tmp_path, model=model, steps=1)
    before = {n: p.detach().clone() for n, p in tr.unwrapped.named_parameters() if p.requires_grad}
    m = tr.train(progress=False)[0]
    after = dict(tr.unwrapped.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert any("lora" in n for n in changed) and any("value_head" in n for n in changed)
    frozen = [n for n, p in after.items() if not p.requires_grad and "lora" in n]
    assert not frozen
    for key in ("kl", "beta", "ppo/pg_loss", "ppo/vf_loss", "ppo/clipfrac", "entropy", "gate_open_rate",
                "rewards/holistic/mean", "rewards/long/mean", "length/tokens", "time/generate", "time/update"):
        assert key in m
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["step"] == 1


# ---------------------------------------------------------------- the rollout reuses the sampling pass


@pytest.mark.parametrize("kind,lora", [("causal", True), ("causal", False), ("seq2seq", True)])
def test_sampling_pass_gives_the_policy_forward_log_probs_and_values(tmp_path, kind, lora):
    model = tiny.causal_lm() if kind == "causal" else tiny.seq2seq_lm()
    tr = trainer(tmp_path, model=model, lora=lora, max_new_tokens=10)
    # float64: merged and unmerged adapters differ only by rounding (up to 1e-4 in float32 on the tiny T5,
    # whose attention is unscaled); in float64 any real difference would stand out.
    policy = tr.unwrapped.double()
    with torch.no_grad():  # non-zero adapters, so merging them during sampling changes the weights
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    base = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora" not in n}
    records = [PROMPTS[0], PROMPTS[3], {"prompt": "Water boils at a hundred degrees and the"}]  # unequal lengths
    batch = tr.encode_prompts(records)
    responses, (logits, values, _trunk) = tr.generate(batch, with_policy_outputs=True)
    assert logits.shape[:2] == responses.shape and values.shape == responses.shape
    # Base weights come back bit for bit (the reference is the network with adapters off).
    for n, p in policy.model.named_parameters():
        if "lora" not in n:
            assert torch.equal(p, base[n]), n
    reused, _ = tr.make_experience(records, batch, responses, (logits, values))
    recomputed, _ = tr.make_experience(records, batch, responses)
    m = reused.mask.bool()
    for key in ("old_logprobs", "old_values", "ref_logprobs", "advantages"):
        torch.testing.assert_close(getattr(reused, key)[m].double(), getattr(recomputed, key)[m].double(),
                                   atol=1e-9, rtol=0, msg=key)


def test_trimming_padding_leaves_log_probs_and_values_unchanged(tmp_path):
    tr = trainer(tmp_path, max_new_tokens=10)
    records = [PROMPTS[0], {"prompt": "Water boils at a hundred degrees and the answer is"}, PROMPTS[1]]
    batch = tr.encode_prompts(records)
    responses = crafted_responses(tr.tokenizer, T=10)  # lengths 4, 10, 1
    exp, _ = tr.make_experience(records, batch, responses)
    # Rows 0 and 2: short prompts (leading columns are padding in both) and short responses.
    mb = exp.rows([0, 2])
    small = trim_padding(mb)
    assert small.prompt_ids.shape[1] < mb.prompt_ids.shape[1]
    assert small.responses.shape[1] == int(mb.mask.sum(1).max()) < mb.responses.shape[1]
    policy = tr.unwrapped.eval()
    with torch.no_grad():
        full_logits, full_values = policy(mb)
        trim_logits, trim_values = policy(small)
    T = small.responses.shape[1]
    m = small.mask.bool()
    torch.testing.assert_close(logprobs_from_logits(trim_logits, small.responses)[m],
                               logprobs_from_logits(full_logits[:, :T], mb.responses[:, :T])[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(trim_values[m], full_values[:, :T][m], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- checkpoints and resume


def test_resume_reproduces_uninterrupted_run(tmp_path):
    keys = ("return/mean", "kl", "ppo/pg_loss", "ppo/vf_loss", "beta")
    full = trainer(tmp_path / "full", steps=4).train(progress=False)

    first = trainer(tmp_path / "split", steps=4, save_every=2)
    first.train(steps=2, progress=False)
    resumed = trainer(tmp_path / "split", steps=4)
    assert resumed.resume() == 2
    rest = resumed.train(progress=False)
    assert [m["step"] for m in rest] == [3, 4]
    for a, b in zip(full[2:], rest):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def test_checkpoint_is_atomic_and_complete(tmp_path):
    tr = trainer(tmp_path, steps=1)
    tr.train(progress=False)
    ckpt = PPOTrainer.latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step-000001"
    names = {p.name for p in ckpt.iterdir()}
    assert {"model", "value_head.safetensors", "optimizer.pt", "trainer_state.json", "rng_0.pt"} <= names
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


# ---------------------------------------------------------------- two processes stay in sync


@pytest.mark.multiprocess
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_two_processes_keep_identical_parameters(tmp_path):
    """Rank 1's batches are all empty. The run must finish with equal parameters, advantages whitened with the
    statistics of both ranks, and logged statistics that are the means over both ranks' responses."""
    from launch import run_two_ranks

    run_two_ranks("ppo_two_ranks.py", tmp_path, port=29533)
    a = torch.load(tmp_path / "params_0.pt")
    b = torch.load(tmp_path / "params_1.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    init = tiny.causal_lm().state_dict()
    assert any(not torch.equal(a[f"model.{k}"], v) for k, v in init.items() if f"model.{k}" in a)

    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=False) for r in (0, 1)]
    for step in range(2):
        r0, r1 = (rk["rollouts"][step] for rk in ranks)
        assert all(r1["empty"]) and not all(r0["empty"])
        assert r0["stats"].keys() == r1["stats"].keys() and "hierarchy/violated" in r1["stats"]

        # Whitening: (A − mean) / std with mean and std over both ranks' tokens, not each rank's own.
        raw = [gae(r["rewards"], r["values"], r["mask"], 1.0, 0.95)[0] for r in (r0, r1)]
        tokens = torch.cat([x[r["mask"].bool()] for x, r in zip(raw, (r0, r1))]).double()
        mean, std = tokens.mean(), tokens.var().add(1e-8).sqrt()  # masked_whiten: unbiased variance
        for x, r in zip(raw, (r0, r1)):
            torch.testing.assert_close(r["advantages"], (((x - mean) / std) * r["mask"]).float(), rtol=1e-4, atol=1e-5)
        assert (masked_whiten(raw[1], r1["mask"]) - r1["advantages"]).abs().max() > 0.1  # local would differ

        # Logged statistics: the same on both ranks, and the means over both ranks' responses.
        m0, m1 = (rk["metrics"][step] for rk in ranks)
        assert {k: v for k, v in m0.items() if not k.startswith("time/")} == \
            {k: v for k, v in m1.items() if not k.startswith("time/")}
        s0, s1 = r0["stats"], r1["stats"]
        assert m0["empty_rate"] == pytest.approx((s0["empty_rate"] + 1.0) / 2)
        assert m0["return/mean"] == pytest.approx((s0["return/mean"] + s1["return/mean"]) / 2)
        # means over non-empty responses only: all on rank 0, so rank 1's 0s must not dilute them
        assert (s0["gate_open_rate"], s0["hierarchy/violated"], s0["rewards/sink/weighted_shaped_sum"]) == \
            (0.5, 1.0, -100.0)
        for k in ("gate_open_rate", "rewards/holistic/mean", "hierarchy/violated", "rewards/sink/weighted_shaped_sum"):
            assert m0[k] == pytest.approx(s0[k]) and s0[k] != s1[k], k
        n0, n1 = (float(r["mask"].sum()) for r in (r0, r1))
        assert m0["entropy"] == pytest.approx((n0 * r0["entropy"] + n1 * r1["entropy"]) / (n0 + n1))
        assert m0["length/tokens_max"] == float(r0["mask"].sum(1).max())


def test_lora_layers_limits_adapters_to_chosen_layers(tmp_path):
    tr = trainer(tmp_path, lora_layers=[1])
    with_lora = {n for n, p in tr.unwrapped.named_parameters() if p.requires_grad and "lora" in n}
    assert with_lora and all(".layers.1." in n for n in with_lora)


# ---------------------------------------------------------------- the frozen trunk (LoRA on the top layers)


@pytest.mark.parametrize("cfg, depth", [
    (dict(lora_layers=[2, 3]), 2),
    (dict(lora_layers=[1, 3]), 1),
    (dict(lora_layers=None), 0),
    (dict(lora=False), 0),
    (dict(lora_layers=[2, 3], reuse_frozen_layers=False), 0),
    (dict(lora_layers=[2, 3], disable_dropout=False, attention_dropout=0.1), 0),  # dropout: passes differ
    (dict(lora_layers=[2, 3], disable_dropout=False), 0),
])
def test_the_frozen_trunk_is_the_bottom_layers_without_adapters(tmp_path, cfg, depth):
    model = tiny.causal_lm(layers=4)
    model.config.attention_dropout = cfg.pop("attention_dropout", 0.0)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = model.config.attention_dropout
    assert trainer(tmp_path, model, **cfg).unwrapped.trunk_depth == depth


def test_a_seq2seq_policy_has_no_frozen_trunk(tmp_path):
    assert trainer(tmp_path, tiny.seq2seq_lm(), lora_layers=[1]).unwrapped.trunk_depth == 0


def test_layers_that_share_a_bottom_layers_cache_have_no_frozen_trunk(tmp_path):
    model = tiny.causal_lm(layers=4)
    model.config.num_kv_shared_layers = 2  # Gemma 3n/4: the top layers read a bottom layer's keys and values
    assert trainer(tmp_path, model, lora_layers=[2, 3]).unwrapped.trunk_depth == 0


def test_a_replay_puts_back_a_forward_that_a_hook_had_set_on_the_layer(tmp_path):
    """accelerate's device-map dispatch sets ``forward`` on the layer instance; a replay must not delete it."""
    from alarm.trainers.trunk import replaying_trunk

    tr = trainer(tmp_path, tiny.causal_lm(layers=4), lora_layers=[2, 3])
    layer = tr.unwrapped.model.get_base_model().model.layers[0]
    calls = []
    original = layer.forward
    layer.forward = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    hooked = layer.forward
    ids = torch.zeros(1, 2, dtype=torch.long)
    with replaying_trunk(tr.unwrapped.model, 2, Sequences(ids, torch.ones_like(ids), trunk_prompt=torch.zeros(1, 2, 32),
                                                          trunk_response=torch.zeros(1, 1, 32))):
        assert layer.forward is not hooked
    assert layer.forward is hooked
    tr.generate(tr.encode_prompts(PROMPTS[:1]))
    assert calls


def test_a_decoding_loop_of_another_shape_keeps_no_trunk():
    from alarm.trainers.trunk import sampled_trunk

    ids = torch.zeros(2, 5, dtype=torch.long)
    batch, responses = Sequences(ids, torch.ones_like(ids)), torch.zeros(2, 3, dtype=torch.long)
    states = lambda *widths: [torch.randn(2, w, 4) for w in widths]  # noqa: E731
    assert sampled_trunk(states(5, 1, 1), batch, responses)["trunk_response"].shape == (2, 3, 4)
    assert sampled_trunk(states(3, 2, 1, 1), batch, responses)  # a chunked prefill
    for widths in [(5, 1), (5, 1, 1, 1), (5, 2), (4, 1, 1), (6, 1)]:  # extra or missing steps, unaligned chunks
        assert sampled_trunk(states(*widths), batch, responses) == {}, widths


def test_the_update_replays_the_frozen_layers_and_trains_exactly_as_without(tmp_path):
    """Same losses and weights after two steps with and without the replay, and the bottom layers run only in
    the rollout (sampling + reference pass), never in the update's passes."""
    runs = {}
    for reuse in (True, False):
        tr = trainer(tmp_path / str(reuse), tiny.causal_lm(layers=4), lora_layers=[2, 3], reuse_frozen_layers=reuse,
                     rollout_batch_size=4, mini_batch_size=2, ppo_epochs=2)
        (bottom, h0), (top, h3) = tiny.attention_calls(tr.unwrapped.model, 0), tiny.attention_calls(tr.unwrapped.model, 3)
        metrics = [tr.step(), tr.step()]
        h0.remove(), h3.remove()
        weights = {n: p.detach().clone() for n, p in tr.unwrapped.named_parameters() if p.requires_grad}
        runs[reuse] = metrics, weights, len(bottom), len(top)
    (m_on, w_on, bottom_on, top_on), (m_off, w_off, bottom_off, top_off) = runs[True], runs[False]
    for a, b in zip(m_on, m_off):
        for k in ("ppo/pg_loss", "ppo/vf_loss", "ppo/approx_kl", "kl", "score/mean"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    for n in w_off:
        torch.testing.assert_close(w_on[n], w_off[n], rtol=1e-4, atol=1e-6)
    reference_passes, update_passes = 2, 2 * 2 * 2  # steps; steps × epochs × mini-batches
    assert top_on == top_off and bottom_off - bottom_on == reference_passes + update_passes


@pytest.mark.parametrize("early_eos", [False, True])
def test_sampling_keeps_the_frozen_layers_output_so_the_reference_pass_skips_them(tmp_path, early_eos):
    model = tiny.causal_lm(layers=4)
    if early_eos:  # responses of unequal length: positions after EOS, which sampling fed and the passes mask
        head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
        with torch.no_grad():  # EOS made likelier in the model itself (PPO samples without generation_config's
            head.weight.copy_(model.lm_head.weight)  # sequence_bias: its log-probs would not describe it)
            head.bias.zero_()
            head.bias[tiny.tokenizer().eos_token_id] = 4.0
        model.lm_head = head
    tr = trainer(tmp_path, model, lora_layers=[2, 3], rollout_batch_size=4)
    nonzero_adapters(tr)  # merged while sampling: the kept states must still be those of the frozen layers
    records = [PROMPTS[0], PROMPTS[3], {"prompt": "Water boils at a hundred degrees and the"}, PROMPTS[5]]
    batch = tr.encode_prompts(records)  # unequal lengths: left padding
    torch.manual_seed(0)
    responses, outputs = tr.generate(batch, with_policy_outputs=True)
    lengths = response_mask(responses, tr.eos_ids).sum(1)
    assert (len(set(lengths.tolist())) > 1) == early_eos and (lengths < responses.shape[1]).any() == early_eos
    trunk = outputs[2]
    assert trunk["trunk_prompt"].shape[:2] == batch.prompt_ids.shape
    assert trunk["trunk_response"].shape[:2] == responses.shape
    bottom, hook = tiny.attention_calls(tr.unwrapped.model, 0)
    reused, _ = tr.make_experience(records, batch, responses, outputs)
    assert bottom == []
    recomputed, _ = tr.make_experience(records, batch, responses, outputs[:2])
    hook.remove()
    assert bottom == [1] and recomputed.trunk_prompt is not None  # without them the reference pass recorded its own
    for k in ("ref_logprobs", "old_logprobs", "advantages", "returns"):
        torch.testing.assert_close(getattr(reused, k), getattr(recomputed, k), rtol=1e-5, atol=1e-5)
    mb = trim_padding(reused.rows([0, 2]))
    with torch.no_grad():
        replayed, values = tr.policy(mb)
        whole, whole_values = tr.policy(replace(mb, trunk_prompt=None, trunk_response=None))
    keep = mb.mask.bool()
    torch.testing.assert_close(replayed[keep], whole[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values[keep], whole_values[keep], rtol=1e-5, atol=1e-5)
    m = reused.mask.bool()
    # Real positions only (sampling numbers padding differently); the last token was never fed back.
    p = batch.prompt_mask.bool()
    torch.testing.assert_close(reused.trunk_prompt[p], recomputed.trunk_prompt[p], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reused.trunk_response[:, :-1][m[:, :-1]],
                               recomputed.trunk_response[:, :-1][m[:, :-1]], rtol=1e-5, atol=1e-5)


def test_a_replayed_mini_batch_has_the_full_passes_logits_values_and_gradients(tmp_path):
    tr = trainer(tmp_path, tiny.causal_lm(layers=4), lora_layers=[3], rollout_batch_size=4)
    nonzero_adapters(tr)
    records = PROMPTS[:4]
    batch = tr.encode_prompts(records)
    responses = tr.generate(batch)
    exp, _ = tr.make_experience(records, batch, responses)
    assert exp.trunk_prompt.shape[:2] == batch.prompt_ids.shape and exp.trunk_response.shape[1] == \
        responses.shape[1]
    mb = trim_padding(exp.rows([1, 3]))
    plain = replace(mb, trunk_prompt=None, trunk_response=None)
    outs, grads = [], []
    for b in (mb, plain):
        tr.policy.zero_grad()
        logits, values = tr.policy(b)
        (logits.float().logsumexp(-1).mean() + values.sum()).backward()
        outs.append((logits.detach(), values.detach()))
        grads.append([p.grad.clone() for p in tr.unwrapped.parameters() if p.requires_grad])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ========================================================= rollout correctness (temperature, bf16, safety valve)


def holistic_only_set():
    rs = RewardSet(CombineConfig(mode="holistic_only"), holistic=e_rate)
    rs.fit(["a"] * 4, ["eee", "abc", "hello there", "x"])
    return rs


def ppo(tmp_path, model, **cfg):
    """:func:`trainer` with a holistic-only reward, 4 prompts a rollout and one step."""
    return trainer(tmp_path, model, holistic_only_set(), **{"rollout_batch_size": 4, "steps": 1, **cfg})


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
    logprobs = logprobs_from_logits(trainer._tempered(logits), mb.responses)
    return torch.exp(logprobs - mb.old_logprobs), mb.mask


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
    sampled = torch.log_softmax(raw.float() / 0.7, -1).gather(-1, exp.responses.unsqueeze(-1)).squeeze(-1)
    mask = exp.mask
    torch.testing.assert_close(exp.old_logprobs, sampled * mask, atol=1e-5, rtol=0)
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
    exp.old_logprobs = (exp.old_logprobs - 5.0) * exp.mask  # ratio e^5 ≈ 148 on every token
    return exp


@pytest.mark.parametrize("threshold", [10.0, None])
def test_mini_batches_with_a_runaway_ratio_are_skipped_and_counted(tmp_path, threshold):
    tr = ppo(tmp_path, tiny.causal_lm(), ppo_epochs=1, ratio_threshold=threshold, early_stop_kl=1e9)
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
    from alarm.trainers.configs import VCBConfig

    assert VCBConfig().weight_decay == 0.0
