"""VCB / DPO / IPO / SLiC-HF / RRHF offline training: tabular optima, hand-computed losses, gradient flow, end to
end, config."""

from __future__ import annotations

import json
import math
import sys
from typing import get_args

import numpy as np
import pytest
import tiny
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alarm.combine import CombineConfig, RewardSet
from alarm.errors import AlarmError
from alarm.recipes.vcb import load_vcb_recipe, run_sample, run_train
from alarm.trainers.configs import LossName
from alarm.trainers.vcb import (
    LOSSES,
    SFT_LOSSES,
    VCBConfig,
    VCBTrainer,
    dpo_loss,
    ipo_loss,
    log_ratio_gap,
    make_pairs,
    normalised_gaps,
    pearson,
    ranking_accuracy,
    reward_scale,
    rrhf_loss,
    sequence_logprobs,
    slic_loss,
    vcb_hinge_loss,
    vcb_loss,
)

# ------------------------------------------------------------------------------------------- the tabular test


def _tabular(loss_name: str, rewards, beta: float, steps: int, lr: float = 0.05):
    """A policy = learnable logits over K candidates; the reference = fixed logits. Train on all untied pairs."""
    r = np.asarray(rewards, dtype=np.float64)
    K = len(r)
    ref_logits = torch.tensor([0.3, -0.2, 0.5, 0.0, -0.4][:K], dtype=torch.float64)
    theta = ref_logits.clone().requires_grad_(True)  # start at the reference, as the real trainer does
    groups = [list(range(K))]
    pairs = make_pairs(groups, r, "all")
    sigma = reward_scale(groups, r, "global")
    gaps = torch.tensor(normalised_gaps(pairs, r, sigma))
    i_idx, j_idx = [p[0] for p in pairs], [p[1] for p in pairs]
    ref_logp = torch.log_softmax(ref_logits, 0)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        logp = torch.log_softmax(theta, 0)
        drho = log_ratio_gap(logp[i_idx], ref_logp[i_idx], logp[j_idx], ref_logp[j_idx])
        loss = LOSSES[loss_name](drho, gaps, beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logp = torch.log_softmax(theta, 0)
        drho = log_ratio_gap(logp[i_idx], ref_logp[i_idx], logp[j_idx], ref_logp[j_idx])
    target = torch.softmax(ref_logp + torch.tensor(r / (beta * sigma[0])), 0)  # π_ref·exp(r/(βσ)), renormalised
    return logp.exp(), target, drho, gaps, loss.item()


REWARDS = [0.0, 0.4, 0.4, 1.5, 0.9]  # with a tie (dropped as a pair) and uneven gaps


def test_tabular_vcb_converges_to_the_kl_optimum():
    pi, target, drho, gaps, loss = _tabular("vcb", REWARDS, beta=0.5, steps=1500, lr=0.1)
    assert loss < 1e-8
    assert torch.allclose(pi, target, atol=1e-4), (pi, target)
    assert torch.allclose(0.5 * drho, gaps, atol=1e-4)  # log-ratio gaps equal the value gaps / β


def test_tabular_dpo_ranks_correctly_but_misses_the_value_gaps():
    pi, target, drho, gaps, _ = _tabular("dpo", REWARDS, beta=0.5, steps=600, lr=0.1)
    assert (drho > 0).all()  # every winner-first pair is ranked right ...
    order = np.argsort(REWARDS)
    assert pi[order[-1]] == pi.max() and pi[order[0]] == pi.min()
    assert (0.5 * drho - gaps).abs().max() > 0.5  # ... but the gaps are not the value gaps
    assert (pi - target).abs().max() > 0.05


def test_tabular_ipo_ranks_but_uses_one_target_gap():
    _, target, drho, gaps, _ = _tabular("ipo", REWARDS, beta=0.5, steps=600, lr=0.1)
    assert (drho > 0).all()
    assert (0.5 * drho - gaps).abs().max() > 0.3


# ------------------------------------------------------------------------------------ hand-computed values


def test_losses_match_hand_computed_values():
    drho, gap, beta = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.5]), 0.5
    # β·Δρ = [0.5, −1.0]
    assert vcb_loss(drho, gap, beta).item() == pytest.approx(((0.5 - 0.5) ** 2 + (-1.0 - 1.5) ** 2) / 2)  # 3.125
    assert vcb_hinge_loss(drho, gap, beta).item() == pytest.approx((0.0 + 2.5) / 2)
    dpo = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2  # −log σ(x) = log(1 + e^−x)
    assert dpo_loss(drho, gap, beta).item() == pytest.approx(dpo, rel=1e-6)
    assert ipo_loss(drho, gap, beta).item() == pytest.approx(((1.0 - 1.0) ** 2 + (-2.0 - 1.0) ** 2) / 2)  # target 1/(2β)=1
    assert log_ratio_gap(torch.tensor(-3.0), torch.tensor(-4.0), torch.tensor(-5.0), torch.tensor(-4.5)).item() == 1.5


def test_pairs_ties_and_best_vs_rest():
    r = [1.0, 3.0, 3.0, 0.0]
    assert sorted(make_pairs([[0, 1, 2, 3]], r, "all")) == [(0, 3), (1, 0), (1, 3), (2, 0), (2, 3)]  # 1~2 tie dropped
    assert make_pairs([[0, 1, 2, 3]], r, "best_vs_rest") == [(1, 0), (1, 3)]
    assert make_pairs([[0, 1]], [1.0, 1.0 + 1e-9], "all") == []
    with pytest.raises(AlarmError):
        make_pairs([[0, 1]], [0, 1], "some")


def test_sigma_global_and_per_prompt():
    r = [0.0, 2.0, 10.0, 14.0]
    groups = [[0, 1], [2, 3]]
    g = reward_scale(groups, r, "global")
    assert np.allclose(g, np.std(r))
    p = reward_scale(groups, r, "prompt")
    assert np.allclose(p, [1.0, 1.0, 2.0, 2.0])  # population std of each prompt's rewards
    pairs = make_pairs(groups, r, "all")
    assert np.allclose(normalised_gaps(pairs, r, p), [2.0, 2.0])
    assert np.allclose(reward_scale([[0, 1]], [3.0, 3.0], "prompt")[:2], 1.0)  # all tied → 1, not 0


def test_sequence_logprobs_mask_prompt_and_padding():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    tokens = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # last position is padding
    assert sequence_logprobs(logits, tokens, mask).item() == pytest.approx(math.log(0.5) + math.log(0.8))


def test_diagnostics():
    assert ranking_accuracy([1.0, -1.0, 0.0, 2.0]) == pytest.approx(0.625)
    assert pearson([0, 0, 0], [1, 2, 3]) is None
    assert pearson([1, 2, 3], [2, 4, 6.5]) > 0.99


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=6),
       st.floats(0.05, 2.0), st.floats(-10, 10))
def test_vcb_loss_is_zero_exactly_at_the_value_calibrated_log_ratios(rewards, beta, shift):
    """ρ = r/(βσ) + c (any c) zeroes the squared loss; the hinge is then zero too, DPO is not."""
    groups = [list(range(len(rewards)))]
    pairs = make_pairs(groups, rewards, "all")
    if not pairs:
        return
    sigma = reward_scale(groups, rewards, "global")
    rho = torch.tensor(rewards, dtype=torch.float64) / (beta * float(sigma[0])) + shift
    i, j = [p[0] for p in pairs], [p[1] for p in pairs]
    drho = rho[i] - rho[j]
    gaps = torch.tensor(normalised_gaps(pairs, rewards, sigma))
    assert vcb_loss(drho, gaps, beta).item() == pytest.approx(0.0, abs=1e-9)
    assert vcb_hinge_loss(drho, gaps, beta).item() == pytest.approx(0.0, abs=1e-9)
    assert (gaps > 0).all() and (drho > 0).all()  # pairs are winner first
    assert vcb_loss(drho + 1.0, gaps, beta).item() > 0


# ------------------------------------------------------------------- SLiC-HF and RRHF: no reference model


def test_slic_and_rrhf_match_hand_computed_values():
    # SLiC-HF: max(0, δ − (log π(y⁺) − log π(y⁻))) − λ·log π(y_best), δ 1, λ 0.5; margins 0.5 and −2
    w, lo, best = torch.tensor([-2.0, -5.0]), torch.tensor([-2.5, -3.0]), torch.tensor([-1.0, -4.0])
    assert slic_loss(w, lo, best, 1.0, 0.5).item() == pytest.approx(((0.5 + 0.5) + (3.0 + 2.0)) / 2)
    # RRHF: p = summed log-prob / length; p_w = [−2, −2], p_l = [−1, −3]: ranking terms 1 and 0;
    # fine-tuning −log π(y_best) = [4, 6] with shares 1/2 and 1/6 of it per pair
    w, lo = torch.tensor([-4.0, -6.0]), torch.tensor([-3.0, -12.0])
    tw, tl, share = torch.tensor([2.0, 3.0]), torch.tensor([3.0, 4.0]), torch.tensor([0.5, 1 / 6])
    assert rrhf_loss(w, lo, tw, tl, w, share, 1.0).item() == pytest.approx(((1.0 + 2.0) + (0.0 + 1.0)) / 2)
    assert rrhf_loss(w, lo, tw, tl, w, share, 0.0).item() == pytest.approx(0.5)  # the ranking loss alone


def _sft_loss(name, logp, tokens, i, j, best, share, weight, margin=1.0):
    """slic/rrhf of winner-first pairs (i, j) of one prompt from per-candidate log-probs ``logp``."""
    if name == "slic":
        return slic_loss(logp[i], logp[j], logp[best], margin, weight)
    return rrhf_loss(logp[i], logp[j], tokens[i], tokens[j], logp[best], share, weight)


@pytest.mark.parametrize("name", ["slic", "rrhf"])
@settings(max_examples=60, deadline=None)
@given(theta=st.lists(st.floats(-4, 4), min_size=2, max_size=2), tokens=st.lists(st.integers(1, 30), min_size=2,
       max_size=2), weight=st.floats(0.05, 2.0), margin=st.floats(0.1, 3.0))
def test_two_candidates_a_gradient_step_raises_the_better_one(name, theta, tokens, weight, margin):
    """Candidate 0 is better (and so the prompt's best): the gradient raises log π(y_0) − log π(y_1) — for a
    tabular softmax policy after one step, and as partial derivatives of the loss in the sequence log-probs."""
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    n = torch.tensor(tokens, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    logp = torch.log_softmax(th, 0)
    _sft_loss(name, logp, n, [0], [1], [0], one, weight, margin).backward()
    with torch.no_grad():
        before = logp[0] - logp[1]
        after = torch.log_softmax(th - 0.01 * th.grad, 0)
        assert after[0] - after[1] > before
    lp = torch.tensor([-float(tokens[0]), -2.0 * tokens[1]], dtype=torch.float64, requires_grad=True)
    _sft_loss(name, lp, n, [0], [1], [0], one, weight, margin).backward()
    assert lp.grad[0] < 0 <= lp.grad[1]  # descent raises the winner and never raises the loser


def _pairs_of_one_prompt(rewards):
    pairs = make_pairs([list(range(len(rewards)))], rewards, "all")
    return [p[0] for p in pairs], [p[1] for p in pairs], [int(np.argmax(rewards))] * len(pairs)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=6), st.data())
def test_slic_hinge_is_zero_exactly_once_every_margin_reaches_delta(rewards, data):
    """λ = 0: the loss is zero iff log π(y⁺) − log π(y⁻) ≥ δ for every pair; λ > 0 adds −λ·log π(y_best) only."""
    i, j, best = _pairs_of_one_prompt(rewards)
    if not i:
        return
    logp = torch.tensor(data.draw(st.lists(st.floats(-20, 0), min_size=len(rewards), max_size=len(rewards))),
                        dtype=torch.float64)
    delta = data.draw(st.floats(0.1, 3.0))
    hinge = slic_loss(logp[i], logp[j], logp[best], delta, 0.0).item()
    assert (hinge == 0) == bool((logp[i] - logp[j] >= delta).all())
    # ρ spaced by δ in reward order: every margin ≥ δ, only the SFT term is left
    ranks = torch.tensor(np.argsort(np.argsort(rewards)), dtype=torch.float64)
    calibrated = -10.0 + delta * ranks
    got = slic_loss(calibrated[i], calibrated[j], calibrated[best], delta, 0.5).item()
    assert got == pytest.approx(-0.5 * calibrated[best].mean().item())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=6), st.data())
def test_rrhf_ranking_loss_is_zero_exactly_when_normalised_logprobs_follow_the_rewards(rewards, data):
    i, j, best = _pairs_of_one_prompt(rewards)
    if not i:
        return
    k = len(rewards)
    tokens = torch.tensor(data.draw(st.lists(st.integers(1, 40), min_size=k, max_size=k)), dtype=torch.float64)
    logp = torch.tensor(data.draw(st.lists(st.floats(-60, 0), min_size=k, max_size=k)), dtype=torch.float64)
    share = torch.full((len(i),), 1.0 / len(i), dtype=torch.float64)
    rank = rrhf_loss(logp[i], logp[j], tokens[i], tokens[j], logp[best], share, 0.0).item()
    p = logp / tokens
    assert (rank == 0) == bool((p[i] >= p[j]).all())
    # p ordered like the rewards (whatever the lengths): no ranking loss, L_ft = −log π(y_best) is what is left
    ordered = (-3.0 + 0.1 * torch.tensor(np.argsort(np.argsort(rewards)), dtype=torch.float64)) * tokens
    got = rrhf_loss(ordered[i], ordered[j], tokens[i], tokens[j], ordered[best], share, 1.0).item()
    assert got == pytest.approx(-ordered[best[0]].item() / len(i))  # the shares add up to one L_ft per prompt


SFT_REWARDS = [0.0, 0.4, 0.4, 1.5, 0.9]  # the best is candidate 3; 0.4 ~ 0.4 is a tie (no pair)
SFT_TOKENS = [3.0, 9.0, 4.0, 6.0, 2.0]  # uneven lengths (they matter to RRHF's p only)


def _tabular_sft(name, weight, steps, lr=0.05):
    """A policy = learnable logits over the candidates of one prompt, trained on its untied pairs with slic/rrhf."""
    theta = torch.tensor([0.3, -0.2, 0.5, 0.0, -0.4], dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor(SFT_TOKENS, dtype=torch.float64)
    i, j, best = _pairs_of_one_prompt(SFT_REWARDS)
    share = torch.full((len(i),), 1.0 / len(i), dtype=torch.float64)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        loss = _sft_loss(name, torch.log_softmax(theta, 0), tokens, i, j, best, share, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    logp = torch.log_softmax(theta, 0).detach()
    return logp, tokens, i, j


def test_tabular_slic_stops_at_the_margin_and_the_sft_term_keeps_raising_the_best():
    logp, _, i, j = _tabular_sft("slic", 0.0, steps=600)
    assert ((logp[i] - logp[j]) >= 1.0).all()  # every margin reached δ = 1 ...
    assert slic_loss(logp[i], logp[j], logp[[3] * len(i)], 1.0, 0.0).item() == 0.0  # ... so the hinge is 0
    assert (logp[i] - logp[j]).min() < 1.2  # and nothing pushed the margins on past it (no SFT term)
    short, _, i, j = _tabular_sft("slic", 0.5, steps=200)
    long, _, _, _ = _tabular_sft("slic", 0.5, steps=800)
    assert ((long[i] - long[j]) >= 1.0 - 1e-6).all()
    assert short.exp()[3] < long.exp()[3] and long.exp()[3] > 0.9  # λ·(−log π(y_best)) keeps pushing the target


def test_tabular_rrhf_orders_normalised_logprobs_like_the_rewards_and_fine_tunes_the_best():
    logp, tokens, i, j = _tabular_sft("rrhf", 0.0, steps=600)
    p = logp / tokens
    assert (p[i] >= p[j] - 1e-6).all()  # the ranking loss is at its optimum: zero
    logp, tokens, i, j = _tabular_sft("rrhf", 1.0, steps=800)
    p = logp / tokens
    assert (p[i] >= p[j] - 1e-3).all()  # still ordered while L_ft ...
    assert logp.exp()[3] > 0.9  # ... drives the best candidate's probability up


# ------------------------------------------------------------------------------- the trainer on tiny models


def e_rate(prompts, completions, **kw):
    return [c.count("e") / (1 + len(c)) for c in completions]


def long_enough(prompts, completions, **kw):
    return [float(len(c) > 3) for c in completions]


def _rows(n_prompts=3, n=4, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the quick", "brown fox", "Paris is", "capital", "water boils", "answer"]
    rows = []
    for p in range(n_prompts):
        for c in range(n):
            rows.append({"prompt_id": f"p{p}", "split": "train" if p < n_prompts - 1 else "test",
                         "prompt": f"Question {p}: {words[p % 6]}?", "candidate": " ".join(rng.choice(words, 2)),
                         "reward": float(c + 0.5 * p)})
    return rows


def _trainer(tmp_path, lora=True, loss="vcb", **cfg):
    base = dict(loss=loss, lora=lora, batch_size=4, micro_batch_size=2, max_steps=2, eval_greedy=False,
                learning_rate=1e-2)
    return VCBTrainer(VCBConfig(**{**base, **cfg}), tiny.causal_lm(), tiny.tokenizer(), _rows(), tmp_path)


def _grads(trainer):
    ref = trainer.reference_logprobs()
    assert not ref.requires_grad  # reference log-probs carry no gradient
    pairs = trainer.pairs[:2]
    i, j = [p[0] for p in pairs], [p[1] for p in pairs]
    logps = trainer.policy(trainer.collate(i + j))
    assert logps.requires_grad
    drho = log_ratio_gap(logps[:2], ref[i], logps[2:], ref[j])
    vcb_loss(drho, torch.tensor(trainer.gaps[:2], dtype=drho.dtype), 0.1).backward()


def test_gradients_reach_only_lora_params(tmp_path):
    t = _trainer(tmp_path)
    _grads(t)
    named = dict(t.unwrapped.model.named_parameters())
    lora_b = [p for n, p in named.items() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert any(float(p.grad.abs().sum()) > 0 for p in lora_b)
    frozen = [p for n, p in named.items() if "lora_" not in n]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)


def test_full_finetuning_reference_is_a_frozen_copy(tmp_path):
    t = _trainer(tmp_path, lora=False)
    _grads(t)
    pol = t.unwrapped
    assert all(p.grad is not None for p in pol.model.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in pol.ref_model.parameters())
    assert not set(map(id, pol.ref_model.parameters())) & set(map(id, pol.model.parameters()))


def test_reference_stays_the_initial_policy_while_lora_trains(tmp_path):
    t = _trainer(tmp_path, max_steps=3)
    idx = list(range(len(t.rows)))
    before = t.logprobs(idx)
    assert torch.allclose(before, t.reference_logprobs(), atol=1e-5)  # LoRA B = 0: policy = reference
    t.train(progress=False)
    after, ref_again = t.logprobs(idx), t.logprobs(idx, reference=True)
    assert not torch.allclose(after, before, atol=1e-4)  # the policy moved
    assert torch.allclose(ref_again, before, atol=1e-5)  # adapters off = the initial policy


@pytest.mark.parametrize("loss", ["vcb", "vcb_hinge", "dpo", "ipo", "slic", "rrhf"])
def test_every_loss_trains_and_logs(tmp_path, loss):
    t = _trainer(tmp_path, loss=loss, max_steps=2)
    hist = t.train(progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(hist) == 4  # eval at start, 2 steps, eval at end
    assert lines[0]["eval/ranking_accuracy"] == 0.5 and lines[0]["eval/corr"] is None  # Δρ ≡ 0 initially
    assert all(math.isfinite(m["loss"]) for m in lines if "loss" in m)
    assert lines[-1]["eval/pairs"] == 6 and lines[-1]["eval/corr"] is not None


@pytest.mark.parametrize("loss, cfg", [("slic", {}), ("slic", {"slic_margin": 3.0, "sft_weight": 0.2}),
                                       ("rrhf", {}), ("rrhf", {"sft_weight": 0.1})])
def test_trainer_feeds_slic_and_rrhf_logprobs_lengths_and_the_best_candidate(tmp_path, loss, cfg):
    """Step 1's loss, recomputed by hand from the candidates' log-probs (the policy is still the reference),
    their token counts and each prompt's best-rewarded candidate, all found here independently."""
    t = _trainer(tmp_path, loss=loss, batch_size=4, micro_batch_size=2, **cfg)
    rows, tok = t.rows, tiny.tokenizer()
    logp = t.logprobs(list(range(len(rows)))).double()
    tokens = torch.tensor([len(tok(r["candidate"], add_special_tokens=False)["input_ids"]) + 1 for r in rows],
                          dtype=torch.float64)  # + EOS
    best = {}
    for k, r in enumerate(rows):
        pid = r["prompt_id"]
        if r["split"] == "train" and (pid not in best or r["reward"] > rows[best[pid]]["reward"]):
            best[pid] = k
    chosen = [t.pairs[k] for k in t.pair_order(0)[:4]]
    i, j = [a for a, _ in chosen], [b for _, b in chosen]
    b = [best[rows[a]["prompt_id"]] for a in i]
    assert b != i  # some pair's winner is not its prompt's best: the SFT target is a candidate of its own
    if loss == "slic":
        expected = slic_loss(logp[i], logp[j], logp[b], cfg.get("slic_margin", 1.0), cfg.get("sft_weight", 0.5))
    else:  # distinct rewards: 6 pairs per training prompt, each carrying 1/6 of the prompt's L_ft
        share = torch.full((4,), 1 / 6, dtype=torch.float64)
        expected = rrhf_loss(logp[i], logp[j], tokens[i], tokens[j], logp[b], share, cfg.get("sft_weight", 1.0))
    assert t.step()["loss"] == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("loss", ["slic", "rrhf"])
def test_slic_and_rrhf_train_end_to_end(tmp_path, loss):
    t = _trainer(tmp_path, loss=loss, max_steps=3)
    params = {n: p.detach().clone() for n, p in t.unwrapped.named_parameters() if p.requires_grad}
    best = sorted(set(t.best.values()))
    before = t.logprobs(best)
    steps = [m for m in t.train(progress=False) if "loss" in m]
    assert len(steps) == 3 and all(math.isfinite(m["loss"]) for m in steps)
    moved = [n for n, p in t.unwrapped.named_parameters() if p.requires_grad and not torch.equal(p, params[n])]
    assert moved and all("lora_" in n for n in moved)
    assert t.logprobs(best).mean() > before.mean()  # the SFT term raised the prompts' best candidates


def test_seq2seq_policy_logprobs_and_gradients(tmp_path):
    t = VCBTrainer(VCBConfig(batch_size=2, micro_batch_size=2, max_steps=1, eval_greedy=False),
                   tiny.seq2seq_lm(), tiny.tokenizer(), _rows(), tmp_path)
    _grads(t)
    assert any(p.grad is not None for n, p in t.unwrapped.model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("loss", ["vcb", "rrhf"])
def test_a_step_forwards_each_candidate_once_and_an_epoch_keeps_a_prompts_pairs_together(tmp_path, loss):
    """All pairs of 4 candidates are 6 pairs over 4 sequences: a step on one prompt's 6 pairs forwards 4 rows
    (it forwarded 12), and gives the loss of those 6 pairs computed pair by pair."""
    t = _trainer(tmp_path, loss=loss, batch_size=6, micro_batch_size=6)
    order = t.pair_order(0)
    assert sorted(order) == list(range(len(t.pairs)))  # every pair once per epoch
    prompts = [t.rows[t.pairs[k][0]]["prompt_id"] for k in order]
    assert prompts[:6] == [prompts[0]] * 6 and prompts[6:] == [prompts[6]] * 6 and prompts[0] != prompts[6]
    assert t.pair_order(1) != order  # a fresh order each epoch
    expected = _trainer(tmp_path / "b", loss=loss, batch_size=6, micro_batch_size=1)  # one pair per pass
    t.reference_logprobs()  # computed once before training (not a step's forward)
    forwarded = []
    collate = t.collate
    t.collate = lambda rows: forwarded.append(list(rows)) or collate(rows)
    m = t.step()
    assert forwarded == [sorted(set(forwarded[0]), key=forwarded[0].index)] and len(forwarded[0]) == 4
    assert m["loss"] == pytest.approx(expected.step()["loss"], rel=1e-5)


def test_checkpoint_resume_continues_the_pair_order(tmp_path):
    t = _trainer(tmp_path, max_steps=2, save_every=1)
    t.train(progress=False)
    full = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[2])  # step 2
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000002"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    t2 = _trainer(tmp_path / "b", max_steps=2)
    t2.output_dir = tmp_path
    assert t2.resume(tmp_path / "checkpoints" / "step-000001") == 1
    m = t2.step()
    assert m["step"] == 2 and m["loss"] == pytest.approx(full["loss"], rel=1e-4)
    with pytest.raises(AlarmError, match="loss"):
        _trainer(tmp_path / "c", loss="dpo").resume(tmp_path / "checkpoints" / "step-000002")


def test_no_pairs_is_a_clear_error(tmp_path):
    rows = [{**r, "reward": 1.0} for r in _rows()]
    with pytest.raises(AlarmError, match="no training pairs"):
        VCBTrainer(VCBConfig(), tiny.causal_lm(), tiny.tokenizer(), rows, tmp_path)


# ---------------------------------------------------------------------------------- sample → train, end to end


QA = [
    {"id": f"q{i}", "split": s, "question": q, "passages": [p, "Cats sleep a lot."], "reference": ref}
    for i, (s, q, p, ref) in enumerate([
        ("train", "Capital of France?", "Paris is the capital of France.", "Paris."),
        ("train", "Boiling point?", "Water boils at 100 C.", "100 C."),
        ("test", "Quick fox?", "The quick brown fox jumps.", "It jumps."),
    ])
]


def _recipe(tmp_path, *extra):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in QA) + "\n")
    return load_vcb_recipe(None, [
        f"output_dir={tmp_path / 'run'}", f"data.path={data}", "data.system_prompt=Answer.", "sample.n=3",
        "sample.max_new_tokens=6", "sample.prompts_per_shard=1", "vcb.batch_size=2", "vcb.micro_batch_size=2",
        "vcb.max_steps=2", "vcb.learning_rate=1e-2", "vcb.eval_max_new_tokens=4", *extra])


def _reward_set():
    return RewardSet(CombineConfig(mode="hierarchical", epsilon=-5.0), holistic=e_rate,
                     aspects={"long": long_enough})


def test_sample_then_train_end_to_end(tmp_path, monkeypatch):
    import datasets

    recipe = _recipe(tmp_path)
    model, tok = tiny.causal_lm(), tiny.tokenizer()
    path = run_sample(recipe, model=model, tokenizer=tok, reward_set=_reward_set(), progress=False)
    ds = datasets.load_from_disk(str(path))
    assert len(ds) == 9 and set(ds["split"]) == {"train", "test"}
    assert {"prompt_id", "prompt", "candidate", "reward", "raw_holistic", "raw_long"} <= set(ds.column_names)
    assert sorted(ds["candidate_index"][:3]) == [0, 1, 2]
    assert len(list((recipe.samples_dir() / "shards").glob("shard-*.jsonl"))) == 3

    # resumable: only the missing shard is generated again
    shard0 = recipe.samples_dir() / "shards" / "shard-00000.jsonl"
    before = shard0.read_text()
    import shutil

    shutil.rmtree(path)
    (recipe.samples_dir() / "shards" / "shard-00002.jsonl").unlink()
    calls = []
    import alarm.recipes.vcb as recipe_module

    real = recipe_module.generate_texts
    monkeypatch.setattr(recipe_module, "generate_texts", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    run_sample(recipe, model=model, tokenizer=tok, reward_set=_reward_set(), progress=False)
    assert calls == [1] and shard0.read_text() == before
    assert len(datasets.load_from_disk(str(path))) == 9

    # train with the recipe's (real) reward set swapped for the fast test one
    import alarm.recipes.vcb as vc

    monkeypatch.setattr(vc, "build_reward_set", lambda r: _reward_set())
    lora0 = {n: p.detach().clone() for n, p in tiny.causal_lm().named_parameters()}
    import alarm.recipes.report as report_module

    monkeypatch.setattr(report_module, "generate_texts", lambda *a, **k: pytest.fail("generated again"))
    final = run_train(recipe, model=model, tokenizer=tok, progress=False)
    out = recipe.training_dir()
    assert out.name == "train-vcb"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert "eval/greedy_reward_mean" in metrics[0] and "eval/greedy_reward_mean" in final
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    greedy = [json.loads(x) for x in (out / "greedy-step-000002.jsonl").read_text().splitlines()]
    assert [g["prompt_id"] for g in greedy] == ["q2"]  # the held-out prompt, with what it scored
    # it ends like `alarm run`: initial vs trained on the held-out prompts, a report with plots and answers
    result = json.loads((out / "eval.json").read_text())
    assert result["headline"]["metric"] == "holistic.z" and result["headline"]["n_prompts"] == 1
    assert {"mean", "low", "high"} <= set(result["headline"]["paired_difference"])
    answers = {s: [json.loads(x)["completion"] for x in (out / "eval" / f"{s}.jsonl").read_text().splitlines()]
               for s in ("initial", "trained")}
    assert answers["trained"] == [g["completion"] for g in greedy]  # the diagnostics' answers, not generated again
    first = [json.loads(x) for x in (out / "greedy-step-000000.jsonl").read_text().splitlines()]
    assert answers["initial"] == [g["completion"] for g in first]
    report = (out / "report.md").read_text()
    for part in ("## Result", "![paired differences](paired_differences.png)", "## Example answers",
                 "ranking_accuracy", "corr", "greedy_reward_mean", "![training curves](training.png)"):
        assert part in report, part
    assert (out / "paired_differences.png").exists() and (out / "training.png").exists()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().sum()) > 0 for p in lora_b)  # adapters moved off zero
    assert all(torch.equal(p, lora0[n.replace("base_model.model.", "").replace(".base_layer", "")])
               for n, p in model.named_parameters() if "lora_" not in n)  # base weights untouched
    with pytest.raises(AlarmError, match="--resume"):
        run_train(recipe, model=tiny.causal_lm(), tokenizer=tok, progress=False)


def test_train_without_greedy_diagnostics_generates_its_evaluation(tmp_path, monkeypatch):
    import alarm.recipes.vcb as vc
    from alarm.generation import generate_texts

    recipe = _recipe(tmp_path, "vcb.eval_greedy=false", "vcb.max_steps=1")
    model, tok = tiny.causal_lm(), tiny.tokenizer()
    run_sample(recipe, model=model, tokenizer=tok, reward_set=_reward_set(), progress=False)
    monkeypatch.setattr(vc, "build_reward_set", lambda r: _reward_set())
    run_train(recipe, model=model, tokenizer=tok, progress=False)
    out = recipe.training_dir()
    assert not list(out.glob("greedy-step-*.jsonl"))  # no diagnostics' answers to reuse
    rows = {s: [json.loads(x) for x in (out / "eval" / f"{s}.scored.jsonl").read_text().splitlines()]
            for s in ("initial", "trained")}
    assert [r["prompt_id"] for r in rows["initial"]] == ["q2"] == [r["prompt_id"] for r in rows["trained"]]
    fresh = generate_texts(tiny.causal_lm(), tok, [rows["initial"][0]["prompt"]], max_new_tokens=4)
    assert rows["initial"][0]["completion"] == fresh[0][0]  # the initial policy: adapters off
    assert "## Example answers" in (out / "report.md").read_text()


def test_changed_sampling_settings_refuse_to_mix(tmp_path):
    recipe = _recipe(tmp_path)
    run_sample(recipe, model=tiny.causal_lm(), tokenizer=tiny.tokenizer(), reward_set=_reward_set(), progress=False)
    with pytest.raises(AlarmError, match="max_new_tokens"):
        run_sample(_recipe(tmp_path, "sample.max_new_tokens=7"), model=tiny.causal_lm(),
                   tokenizer=tiny.tokenizer(), reward_set=_reward_set(), progress=False)


def test_train_without_samples_says_what_to_run(tmp_path):
    with pytest.raises(AlarmError, match="alarm vcb sample"):
        run_train(_recipe(tmp_path), model=tiny.causal_lm(), tokenizer=tiny.tokenizer())


# ----------------------------------------------------------------------------------------------- config


def test_unknown_key_is_a_one_line_error(tmp_path):
    with pytest.raises(AlarmError) as e:
        load_vcb_recipe(None, ["vcb.learnig_rate=0.1"])
    assert "vcb.learnig_rate" in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "r.yaml"
    bad.write_text("sample:\n  candidates: 4\n")
    with pytest.raises(AlarmError, match=r"^sample.candidates: unknown setting"):
        load_vcb_recipe(bad)
    with pytest.raises(AlarmError, match="vcb.loss"):
        load_vcb_recipe(None, ["vcb.loss=kto"])
    with pytest.raises(AlarmError, match="rewards.holistic.type"):
        load_vcb_recipe(None, ["rewards.holistic.type=magic"])


def test_loss_names_and_the_settings_each_loss_reads():
    names = {"vcb", "vcb_hinge", "dpo", "ipo", "slic", "rrhf"}
    assert set(get_args(LossName)) == names == set(LOSSES) | set(SFT_LOSSES)
    for loss in sorted(names):
        assert load_vcb_recipe(None, [f"vcb.loss={loss}"]).vcb.loss == loss
    slic, rrhf = VCBConfig(loss="slic"), VCBConfig(loss="rrhf")
    assert (slic.resolved_slic_margin, slic.resolved_sft_weight, rrhf.resolved_sft_weight) == (1.0, 0.5, 1.0)
    assert VCBConfig(loss="rrhf", sft_weight=0.25).resolved_sft_weight == 0.25
    assert VCBConfig(loss="slic", slic_margin=2.0).resolved_slic_margin == 2.0
    with pytest.raises(AlarmError, match=r"^vcb.sft_weight: read only by losses slic and rrhf, not by loss dpo"):
        load_vcb_recipe(None, ["vcb.loss=dpo", "vcb.sft_weight=0.5"])
    with pytest.raises(AlarmError, match=r"^vcb.slic_margin: read only by loss slic, not by loss rrhf"):
        load_vcb_recipe(None, ["vcb.loss=rrhf", "vcb.slic_margin=2"])
    with pytest.raises(AlarmError, match=r"^vcb.slic_margin: .*greater than 0"):
        load_vcb_recipe(None, ["vcb.loss=slic", "vcb.slic_margin=0"])
    with pytest.raises(AlarmError, match=r"^vcb.sft_weight: .*greater than or equal to 0"):
        load_vcb_recipe(None, ["vcb.loss=rrhf", "vcb.sft_weight=-1"])


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from alarm.cli import main

    assert main(["vcb", "train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alarm: error: recipe") and "\n" not in err
    good = tmp_path / "r.yaml"
    good.write_text("vcb:\n  loss: dpo\n")
    assert main(["vcb", "sample", "--config", str(good), "vcb.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alarm: error: vcb.bogus: unknown setting (valid in vcb: ") and "\n" not in err
    assert {"loss", "beta", "sigma", "learning_rate"} <= set(err.split("valid in vcb: ")[1].rstrip(")").split(", "))


def test_packaged_recipes_validate():
    from importlib import resources

    for name in ("vcb_quickstart.yaml", "vcb_qa_feedback.yaml"):
        r = load_vcb_recipe(str(resources.files("alarm") / "recipes" / name))
        assert r.sample.n == 4 and r.vcb.loss == "vcb" and r.combine["mode"] == "hierarchical"


# ------------------------------------------------------------------------ two processes, uneven pair shares


@pytest.mark.multiprocess
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
@pytest.mark.parametrize("layers, port", [("all", 29547), ("top", 29546)])  # top: the frozen layer 0 replayed
def test_two_processes_with_uneven_pairs_match_one_process(tmp_path, layers, port):
    """Step 1 gives the ranks 6 and 5 pairs (2 and 1 micro-batches), step 2 gives them 1 and 0: the run must
    finish, keep the ranks equal, and give one process's losses and parameters on the same pairs."""
    import vcb_two_ranks as two
    from launch import run_two_ranks

    run_two_ranks("vcb_two_ranks.py", tmp_path / "two", port=port, args=(layers,))
    a, b = (torch.load(tmp_path / "two" / f"params_{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)

    config = {**two.CONFIG, **(two.TOP_ONLY if layers == "top" else {})}
    one = VCBTrainer(VCBConfig(**config), tiny.causal_lm(), tiny.tokenizer(), two.rows(), tmp_path / "one")
    one_steps = [m for m in one.train(progress=False) if "loss" in m]
    for r in (0, 1):
        steps = [m for m in json.loads((tmp_path / "two" / f"history_{r}.json").read_text()) if "loss" in m]
        assert len(steps) == len(one_steps) == 2
        for m, ref in zip(steps, one_steps):
            for k in ("loss", "beta_delta_rho/mean", "gap/mean", "calibration/mse"):
                assert m[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), (r, m["step"], k)
        # At step 1 Δρ is 0 up to rounding, whose sign depends on the batching: compare the ranking at step 2.
        assert steps[1]["train/ranking_accuracy"] == pytest.approx(one_steps[1]["train/ranking_accuracy"])
    assert one_steps[1]["beta_delta_rho/mean"] != 0  # step 2 sees the policy step 1 moved
    p1 = two.trainable(one)
    assert p1.keys() == a.keys()
    for k in a:
        torch.testing.assert_close(a[k], p1[k], rtol=0, atol=1e-5)  # Adam steps are 1e-2


TWO_RANKS_WITH_LOSS = """
import json, sys
import tiny, torch
import vcb_two_ranks as two
from accelerate import Accelerator
from alarm.trainers.vcb import VCBConfig, VCBTrainer

out, loss = sys.argv[1], sys.argv[2]
acc = Accelerator(cpu=True)
tr = VCBTrainer(VCBConfig(**two.CONFIG, loss=loss), tiny.causal_lm(), tiny.tokenizer(), two.rows(), out,
                accelerator=acc)
history = tr.train(progress=False)
with open(f"{out}/history_{acc.process_index}.json", "w") as f:
    json.dump(history, f)
torch.save(two.trainable(tr), f"{out}/params_{acc.process_index}.pt")
"""


@pytest.mark.multiprocess
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
@pytest.mark.parametrize("loss, port", [("slic", 29548), ("rrhf", 29549)])
def test_two_processes_with_slic_and_rrhf_match_one_process(tmp_path, loss, port):
    """The same uneven split as above (rank 1 runs a zero-weight pass at step 2) with the losses that add the
    prompts' best candidates to the forward pass: equal ranks, and one process's losses and parameters."""
    import vcb_two_ranks as two
    from launch import run_two_ranks

    script = tmp_path / "two_ranks_with_loss.py"
    script.write_text(TWO_RANKS_WITH_LOSS)
    run_two_ranks(str(script), tmp_path / "two", port=port, args=(loss,))
    a, b = (torch.load(tmp_path / "two" / f"params_{r}.pt") for r in (0, 1))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    one = VCBTrainer(VCBConfig(**two.CONFIG, loss=loss), tiny.causal_lm(), tiny.tokenizer(), two.rows(),
                     tmp_path / "one")
    one_steps = [m for m in one.train(progress=False) if "loss" in m]
    for r in (0, 1):
        steps = [m for m in json.loads((tmp_path / "two" / f"history_{r}.json").read_text()) if "loss" in m]
        assert len(steps) == len(one_steps) == 2
        for m, ref in zip(steps, one_steps):
            assert m["loss"] == pytest.approx(ref["loss"], rel=1e-4), (r, m["step"])
    p1 = two.trainable(one)
    for k in a:
        torch.testing.assert_close(a[k], p1[k], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the frozen trunk (LoRA on the top layers)


def _trunk_run(tmp_path, **cfg):
    """Three steps of VCB on a 4-layer model with LoRA on layers 2–3: metrics, trained weights, the trainer,
    and the attention calls of the frozen layer 0 and the adapted layer 3."""
    base = dict(loss="vcb", batch_size=4, micro_batch_size=2, max_steps=3, eval_greedy=False, learning_rate=1e-2,
                lora_layers=[2, 3])
    t = VCBTrainer(VCBConfig(**{**base, **cfg}), tiny.causal_lm(layers=4), tiny.tokenizer(), _rows(), tmp_path)
    (bottom, h0), (top, h3) = tiny.attention_calls(t.unwrapped.model, 0), tiny.attention_calls(t.unwrapped.model, 3)
    hist = t.train(progress=False)
    h0.remove(), h3.remove()
    weights = {n: p.detach().clone() for n, p in t.unwrapped.named_parameters() if p.requires_grad}
    return hist, weights, t, len(bottom), len(top)


def _same_training(a, b):
    for x, y in zip(a[0], b[0]):
        for k in ("loss", "beta_delta_rho/mean", "eval/corr", "eval/ranking_accuracy"):
            if x.get(k) is not None or y.get(k) is not None:
                assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), k
    for n in b[1]:
        torch.testing.assert_close(a[1][n], b[1][n], rtol=1e-4, atol=1e-6)


def test_vcb_replays_each_candidates_frozen_layers_and_trains_exactly_as_without(tmp_path):
    on, off = _trunk_run(tmp_path / "on"), _trunk_run(tmp_path / "off", reuse_frozen_layers=False)
    _same_training(on, off)
    t, bottom, top = on[2], on[3], on[4]
    assert t.unwrapped.trunk_depth == 2 and off[2].unwrapped.trunk_depth == 0
    assert len(t.trunk) == len(t.rows)  # every candidate's states kept from the one reference pass
    assert bottom == 1 and top == off[4] == off[3] > 1  # the frozen layers ran in that pass only


@pytest.mark.parametrize("gb", [1e-9, 1e-5])  # nothing fits; a few candidates fit
def test_vcb_keeps_frozen_layers_only_within_its_memory_cap(tmp_path, gb):
    with pytest.warns(UserWarning, match="frozen_layers_max_gb reached"):
        capped = _trunk_run(tmp_path / "capped", frozen_layers_max_gb=gb)
    t = capped[2]
    # What the kept states really hold (a slice would hold its whole padded batch), within the cap.
    kept = sum(x.untyped_storage().nbytes() for pair in t.trunk.values() for x in pair)
    assert kept == sum((len(p) + len(r)) * p.shape[-1] * p.element_size() for p, r in t.trunk.values())
    assert kept <= gb * 2**30 and (len(t.trunk) > 0) == (gb > 1e-6) and len(t.trunk) < len(t.rows)
    _same_training(capped, _trunk_run(tmp_path / "off", reuse_frozen_layers=False))
