"""VCB — offline value-based calibration — with DPO, IPO, SLiC-HF and RRHF beside it, readable top to bottom.

docs/method.md §2.5. Candidates sampled offline from the initial policy carry reward values (any ALaRM combination,
the hierarchical one included). The KL-regularised optimum satisfies

    log π*(y_i)/π_ref(y_i) − log π*(y_j)/π_ref(y_j) = (r_i − r_j) / β

so VCB trains the policy until its log-ratio gap to the reference matches the reward *value* gap of each pair;
DPO and IPO only use which response won.

**The VCB loss here is a reconstruction.** The paper's exact published formula was not available to us; we
implement the description: L = mean over pairs of (β·Δρ_θ(i, j) − (r_i − r_j)/σ)², Δρ_θ the difference of the
two responses' summed log π_θ/π_ref, σ the reward standard deviation (global, or per prompt). A hinge variant
max(0, (r_i − r_j)/σ − β·Δρ_θ) for r_i > r_j only pushes pairs that are not yet separated by their value gap.
On a candidate set the squared loss is minimised exactly by π ∝ π_ref·exp(r/(βσ)) (tests/test_vcb.py).

**SLiC-HF and RRHF**, the order-based baselines of the VCB paper, are beside them (``slic_loss``, ``rrhf_loss``:
each cites its paper's formula and says where this offline version differs). They read only the policy's own
log-likelihoods — no reference model; π_ref is still computed, once, for the logged Δρ diagnostics — and add an
SFT term on the best-rewarded candidate of the prompt.

Pairs are always oriented winner first (r_i > r_j); ties (|r_i − r_j| ≤ ``tie_tolerance``) are dropped.
Sequence log-probs are sums over the response tokens only (prompt and padding masked). The reference is the
same network with its LoRA adapters disabled (or a frozen copy for full fine-tuning); its log-probs are
computed once, without gradient, for every candidate.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alarm import checkpoints
from alarm.data.prompts import reward_inputs
from alarm.errors import AlarmError
from alarm.generation import generate_texts
from alarm.models import is_seq2seq
from alarm.trainers.configs import VCBConfig
from alarm.trainers.runtime import (
    cut_metrics,
    log_metrics,
    make_accelerator,
    make_optimizer,
    tracker_kwargs,
)
from alarm.trainers.sequences import (
    Sequences,
    eos_ids,
    logprobs_from_logits,
    policy_or_reference,
    response_logits,
    trainable_with_reference,
)
from alarm.trainers.trunk import recording_trunk, replaying_trunk, reusable_trunk_depth

# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------------
# The math: pure functions (hand-checked in tests)
# ----------------------------------------------------------------------------------------------------------


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log π(token_t) over the masked (response) positions: [B, T, V], [B, T], [B, T] → [B]."""
    return (logprobs_from_logits(logits, tokens) * mask).sum(-1)


def log_ratio_gap(policy_i, ref_i, policy_j, ref_j) -> torch.Tensor:
    """Δρ = log π_θ(y_i)/π_ref(y_i) − log π_θ(y_j)/π_ref(y_j) from summed sequence log-probs."""
    return (policy_i - ref_i) - (policy_j - ref_j)


def vcb_loss(delta_rho: torch.Tensor, gap: torch.Tensor, beta: float) -> torch.Tensor:
    """VCB, squared (a RECONSTRUCTION of the paper's loss): mean (β·Δρ − (r_i − r_j)/σ)².

    ``gap`` is the normalised value gap (r_i − r_j)/σ. Zero exactly when every log-ratio gap equals the
    value gap divided by β — the KL-regularised optimum restricted to the candidates.
    """
    return ((beta * delta_rho - gap) ** 2).mean()


def vcb_hinge_loss(delta_rho: torch.Tensor, gap: torch.Tensor, beta: float) -> torch.Tensor:
    """VCB, hinge (reconstruction): mean max(0, (r_i − r_j)/σ − β·Δρ) over pairs with r_i > r_j."""
    return F.relu(gap - beta * delta_rho).mean()


def dpo_loss(delta_rho: torch.Tensor, gap: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO: mean −log σ(β·Δρ), winner first. Uses only which response won (``gap`` is ignored)."""
    return -F.logsigmoid(beta * delta_rho).mean()


def ipo_loss(delta_rho: torch.Tensor, gap: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al.): mean (Δρ − 1/(2β))², winner first; one target gap for every pair (``gap`` ignored).

    Summed sequence log-probs, like the other losses here (TRL averages per token for IPO).
    """
    return ((delta_rho - 1.0 / (2.0 * beta)) ** 2).mean()


def slic_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, logp_best: torch.Tensor, margin: float,
              sft_weight: float) -> torch.Tensor:
    """SLiC-HF: mean over pairs of max(0, δ − log π_θ(y⁺|x) + log π_θ(y⁻|x)) − λ·log π_θ(y_best|x).

    Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (arXiv 2305.10425), §2,
    eq. 1: L(θ) = max(0, δ − log P_θ(y⁺|x) + log P_θ(y⁻|x)) − λ·log P_θ(y_ref|x), a rank-calibration hinge on
    summed sequence log-likelihoods plus cross-entropy on y_ref. No reference model: the inputs are the policy's
    summed response log-probs of the winner, the loser and the target. Offline difference: the paper's y_ref is
    the SFT target (a human-written response); our samples have only the policy's candidates, so y_best is the
    best-rewarded candidate of the pair's prompt (the same target for every pair of that prompt).
    """
    return (F.relu(margin - (logp_w - logp_l)) - sft_weight * logp_best).mean()


def rrhf_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, tokens_w: torch.Tensor, tokens_l: torch.Tensor,
              logp_best: torch.Tensor, ft_share: torch.Tensor, ft_weight: float = 1.0) -> torch.Tensor:
    """RRHF: mean over pairs of max(0, p_l − p_w) + ft_weight·ft_share·(−log π_θ(y_best|x)).

    Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback" (NeurIPS 2023,
    arXiv 2304.05302), §3: p_i = Σ_t log P_π(y_i,t | x, y_i,<t) / |y_i| (eq. 1, length-normalised),
    L_rank = Σ_{r_i < r_j} max(0, p_i − p_j) (eq. 2), L_ft = −Σ_t log P_π(y_i′,t | x, y_i′,<t) with
    i′ = argmax_i r_i (eq. 3), L = L_rank + L_ft (eq. 4). No reference model. ``tokens_*`` are the response
    lengths |y|; L_ft is summed over tokens, as in eq. 3. Offline difference: the paper's unit is one prompt
    with all its candidates; ours is a stream of pairs, so each pair carries ``ft_share`` = 1/(training pairs
    of its prompt) of that prompt's L_ft — over an epoch the pair losses then sum to Σ over prompts of the
    paper's L (a prompt whose candidates all tie has no pair and no L_ft here).
    """
    rank = F.relu(logp_l / tokens_l - logp_w / tokens_w)
    return (rank - ft_weight * ft_share * logp_best).mean()


# The losses of Δρ (they need the reference). slic and rrhf read the policy's own log-likelihoods and the
# prompt's best candidate instead (VCBTrainer.pair_loss feeds them).
LOSSES = {"vcb": vcb_loss, "vcb_hinge": vcb_hinge_loss, "dpo": dpo_loss, "ipo": ipo_loss}
SFT_LOSSES = ("slic", "rrhf")


def make_pairs(groups: list[list[int]], rewards, mode: str = "all", tie_tolerance: float = 1e-6):
    """Index pairs ``(i, j)`` with r_i > r_j (+ tolerance) inside each group of candidates of one prompt.

    ``all``: every untied pair. ``best_vs_rest``: the best candidate against each clearly worse one.
    """
    r = np.asarray(rewards, dtype=np.float64)
    pairs = []
    for g in groups:
        if mode == "best_vs_rest":
            best = max(g, key=lambda k: r[k])
            pairs += [(best, j) for j in g if r[best] - r[j] > tie_tolerance]
        elif mode == "all":
            pairs += [(i, j) if r[i] > r[j] else (j, i)
                      for a, i in enumerate(g) for j in g[a + 1 :] if abs(r[i] - r[j]) > tie_tolerance]
        else:
            raise AlarmError(f"pairs mode {mode!r} is unknown; use 'all' or 'best_vs_rest'")
    return pairs


def reward_scale(groups: list[list[int]], rewards, mode: str = "global") -> np.ndarray:
    """σ for each candidate: the (population) std of all rewards, or of its own prompt's rewards.

    A zero std (all rewards equal: no pairs survive anyway) becomes 1.
    """
    r = np.asarray(rewards, dtype=np.float64)
    sigma = np.ones_like(r)
    if mode == "global":
        members = [i for g in groups for i in g]
        s = float(r[members].std()) if members else 0.0
        sigma[members] = s if s > 0 else 1.0
    elif mode == "prompt":
        for g in groups:
            s = float(r[g].std())
            sigma[g] = s if s > 0 else 1.0
    else:
        raise AlarmError(f"sigma mode {mode!r} is unknown; use 'global' or 'prompt'")
    return sigma


def normalised_gaps(pairs, rewards, sigma) -> np.ndarray:
    """(r_i − r_j)/σ for each pair (σ of the pair's prompt, equal for both members)."""
    r = np.asarray(rewards, dtype=np.float64)
    return np.array([(r[i] - r[j]) / sigma[i] for i, j in pairs], dtype=np.float64)


def pearson(x, y) -> float | None:
    """Correlation of two sequences; None when either is constant (e.g. Δρ ≡ 0 at the initial policy)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def ranking_accuracy(delta_rho) -> float | None:
    """Share of winner-first pairs with Δρ > 0 (a tie counts half)."""
    d = np.asarray(delta_rho, dtype=np.float64)
    if len(d) == 0:
        return None
    return float(((d > 0) + 0.5 * (d == 0)).mean())


# ----------------------------------------------------------------------------------------------------------
# Candidates: tokenised once, batched as [left-padded prompt | right-padded response]
# ----------------------------------------------------------------------------------------------------------


def _groups_by_prompt(rows: list[dict], indices: list[int]) -> list[list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        groups[str(rows[i]["prompt_id"])].append(i)
    return list(groups.values())


class Policy(torch.nn.Module):
    """The trained model (LoRA by default) and its reference: adapters disabled, or a frozen copy."""

    def __init__(self, model: torch.nn.Module, config: VCBConfig, accelerator=None):
        super().__init__()
        self.is_encoder_decoder = is_seq2seq(model)
        self.model, self.ref_model = trainable_with_reference(model, config)
        # Bottom layers without adapters: each candidate's states there never change (docs/method.md §2.5).
        self.trunk_depth = reusable_trunk_depth(self.model, self.ref_model, config, accelerator)

    def forward(self, batch: Sequences, reference: bool = False) -> torch.Tensor:
        """Summed log-probs of each row's response tokens, [B]. A batch carrying the frozen layers' states
        (:meth:`VCBTrainer.frozen_trunk`) skips those layers."""
        net, ctx = policy_or_reference(self.model, self.ref_model, reference)
        with ctx, replaying_trunk(net, self.trunk_depth, batch):
            logits, _ = response_logits(net, batch, self.is_encoder_decoder)
        return sequence_logprobs(logits, batch.responses, batch.mask)


class VCBTrainer:
    """Offline training on scored candidates with the VCB, VCB-hinge, DPO, IPO, SLiC-HF or RRHF loss.

    ``samples``: a ``datasets.Dataset`` or list of rows with ``prompt_id``, ``prompt`` (formatted for the
    policy), ``candidate``, ``reward`` and optionally ``split`` ("train" rows are trained on, "test" rows give
    the held-out diagnostics) plus the columns the rewards read. ``reward_set`` (fitted) scores greedy outputs
    on held-out prompts; without it that diagnostic is skipped.
    """

    def __init__(self, config: VCBConfig, model, tokenizer, samples, output_dir: str | os.PathLike,
                 reward_set=None, accelerator=None, max_new_tokens: int | None = None,
                 reference_cache: str | os.PathLike | None = None):
        rows = samples.to_list() if hasattr(samples, "to_list") else list(samples)
        for k in ("prompt_id", "prompt", "candidate", "reward"):
            if rows and k not in rows[0]:
                raise AlarmError(f"the samples have no {k!r} column; create them with `alarm vcb sample`")
        self.rows = rows
        self.rewards = np.array([float(r["reward"]) for r in rows], dtype=np.float64)
        self.config, self.tokenizer, self.reward_set = config, tokenizer, reward_set
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator or make_accelerator(config.report_to, output_dir)
        train = [i for i, r in enumerate(rows) if r.get("split", "train") == "train"]
        test = [i for i, r in enumerate(rows) if r.get("split", "train") == "test"]

        # Pairs and their normalised value gaps (σ from the training rewards; per prompt if asked).
        train_groups, test_groups = _groups_by_prompt(rows, train), _groups_by_prompt(rows, test)
        sigma = reward_scale(train_groups, self.rewards, config.sigma)
        if config.sigma == "prompt":
            sigma[test] = reward_scale(test_groups, self.rewards, "prompt")[test]
        else:
            sigma[test] = sigma[train[0]] if train else 1.0
        self.sigma = sigma
        self.pairs = make_pairs(train_groups, self.rewards, config.pairs, config.tie_tolerance)
        self.gaps = normalised_gaps(self.pairs, self.rewards, sigma)
        by_prompt: dict[str, list[int]] = defaultdict(list)
        for k, (i, _) in enumerate(self.pairs):
            by_prompt[str(rows[i]["prompt_id"])].append(k)
        self.pairs_by_prompt = list(by_prompt.values())
        self.eval_pairs = make_pairs(test_groups, self.rewards, "all", config.tie_tolerance)
        self.eval_gaps = normalised_gaps(self.eval_pairs, self.rewards, sigma)
        if not self.pairs:
            raise AlarmError("no training pairs: every prompt's candidates tie; sample more candidates (sample.n) "
                             "or use a reward that separates them")
        self.eval_prompts = [rows[g[0]] for g in test_groups]
        # SLiC's and RRHF's SFT target: the best-rewarded candidate of each training prompt (first of a tie), and
        # RRHF's share of it per pair (1 / the prompt's training pairs).
        self.best = {k: max(g, key=lambda i: self.rewards[i]) for g in train_groups for k in g}
        pairs_of = defaultdict(int)
        for i, _ in self.pairs:
            pairs_of[self.best[i]] += 1
        self.ft_share = np.array([1.0 / pairs_of[self.best[i]] for i, _ in self.pairs])

        torch.manual_seed(config.seed)
        policy = Policy(model, config, self.accelerator)
        self.is_encoder_decoder = policy.is_encoder_decoder
        self.eos_ids = eos_ids(policy.model, tokenizer)
        self.max_new_tokens = max_new_tokens
        self.reference_cache = Path(reference_cache) if reference_cache else None
        self.encoded = [self._encode(r) for r in rows]
        self.n_tokens = torch.tensor([len(r) for _, r in self.encoded], dtype=torch.float64)  # response lengths
        self.optimizer = make_optimizer(policy, config.learning_rate, config.weight_decay)
        self.policy, self.optimizer = self.accelerator.prepare(policy, self.optimizer)
        self.steps_per_epoch = math.ceil(len(self.pairs) / config.batch_size)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.step_idx = 0
        self.ref_logps: torch.Tensor | None = None
        # Each candidate's frozen-layer states (prompt part, response part), kept on the CPU from its first pass.
        self.trunk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.trunk_room = int(config.frozen_layers_max_gb * 2**30)  # bytes left for them

    @property
    def unwrapped(self) -> Policy:
        return self.accelerator.unwrap_model(self.policy)

    # -- data ---------------------------------------------------------------------------------------------

    def _encode(self, row: dict) -> tuple[list[int], list[int]]:
        """Prompt ids (as generation saw them) and response ids + EOS (no EOS when cut at max_new_tokens)."""
        tok = self.tokenizer
        prompt = tok(row["prompt"], add_special_tokens=self.is_encoder_decoder)["input_ids"]
        response = tok(row["candidate"], add_special_tokens=False)["input_ids"]
        cut = self.max_new_tokens is not None and len(response) >= self.max_new_tokens
        if not cut:
            response = response + [self.eos_ids[0]]
        if self.config.max_response_tokens:
            response = response[: self.config.max_response_tokens]
        return prompt, response

    def collate(self, indices: list[int]) -> Sequences:
        pad = self.tokenizer.pad_token_id
        pad = self.eos_ids[0] if pad is None else pad
        prompts = [self.encoded[i][0] for i in indices]
        responses = [self.encoded[i][1] for i in indices]
        P, T = max(map(len, prompts)), max(map(len, responses))
        enc_dec = self.is_encoder_decoder
        # causal: left-padded prompts so every response starts at column P; seq2seq: right-padded encoder input
        prompt_ids = torch.tensor([([] if enc_dec else [pad] * (P - len(p))) + p +
                                   ([pad] * (P - len(p)) if enc_dec else []) for p in prompts])
        prompt_mask = torch.tensor([([] if enc_dec else [0] * (P - len(p))) + [1] * len(p) +
                                    ([0] * (P - len(p)) if enc_dec else []) for p in prompts])
        resp = torch.tensor([r + [pad] * (T - len(r)) for r in responses])
        mask = torch.tensor([[1.0] * len(r) + [0.0] * (T - len(r)) for r in responses])
        batch = Sequences(prompt_ids, prompt_mask).with_responses(resp, mask, self.unwrapped.model, self.tokenizer)
        return batch.to(self.accelerator.device)

    @contextmanager
    def frozen_trunk(self, indices: list[int], batch: Sequences):
        """Around one forward pass of ``batch`` (candidates ``indices``): when every candidate's frozen-layer
        states are kept, ``batch`` gets them and the pass replays them; otherwise the pass runs whole and the
        states it computes are kept, up to ``frozen_layers_max_gb`` (then a warning, and later passes of the
        candidates left out run whole)."""
        depth = self.unwrapped.trunk_depth
        if depth and all(i in self.trunk for i in indices):
            batch.trunk_prompt, batch.trunk_response = self._stacked_trunk(indices, batch)
            yield
            return
        with recording_trunk(self.unwrapped.model, depth if self.trunk_room > 0 else 0) as states:
            yield
        if len(states) == 1:
            self._keep_trunk(indices, batch, states[0])

    def _keep_trunk(self, indices: list[int], batch: Sequences, states: torch.Tensor) -> None:
        P = batch.prompt_ids.shape[1]
        per_token = states.shape[-1] * states.element_size()
        lengths = zip(batch.prompt_mask.sum(1).tolist(), batch.mask.sum(1).long().tolist())
        for b, (i, (n_p, n_r)) in enumerate(zip(indices, lengths)):
            if i in self.trunk:
                continue
            size = (n_p + n_r) * per_token
            if size > self.trunk_room:
                self.trunk_room = 0
                if self.accelerator.is_main_process:
                    warnings.warn(f"vcb.frozen_layers_max_gb reached after {len(self.trunk)} candidates: the others' "
                                  "passes run whole (raise it to keep more)", stacklevel=4)
                return
            # Copies: a slice would keep the whole padded batch's states alive.
            self.trunk[i] = (states[b, P - n_p : P].to("cpu", copy=True), states[b, P : P + n_r].to("cpu", copy=True))
            self.trunk_room -= size

    def _stacked_trunk(self, indices: list[int], batch: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept states laid out like ``batch`` (its ``trunk_prompt`` and ``trunk_response``): prompts
        left-padded, responses right-padded (zeros there)."""
        P, T = batch.prompt_ids.shape[1], batch.responses.shape[1]
        first = self.trunk[indices[0]][0]
        prompt = first.new_zeros(len(indices), P, first.shape[-1])
        response = first.new_zeros(len(indices), T, first.shape[-1])
        for b, i in enumerate(indices):
            p, r = self.trunk[i]
            prompt[b, P - len(p) :] = p
            response[b, : len(r)] = r
        dev = batch.prompt_ids.device
        return prompt.to(dev), response.to(dev)

    @torch.no_grad()
    def logprobs(self, indices: list[int], reference: bool = False) -> torch.Tensor:
        """Summed response log-probs of candidates (no gradient), in eval mode, batched."""
        pol = self.unwrapped
        was = pol.training
        pol.eval()
        out = []
        bs = max(1, self.config.eval_batch_size)
        for s in range(0, len(indices), bs):
            chunk = indices[s : s + bs]
            batch = self.collate(chunk)
            with self.frozen_trunk(chunk, batch):
                out.append(pol(batch, reference=reference).float().cpu())
        pol.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    def reference_logprobs(self) -> torch.Tensor:
        """log π_ref of every candidate, computed once (constant during training).

        With ``reference_cache`` they are read from / written to that file, so several losses trained on the
        same samples share one reference pass (the file records the token counts it was computed on).
        """
        if self.ref_logps is not None:
            return self.ref_logps
        key = [len(p) + 1000003 * len(r) for p, r in self.encoded]
        cache = self.reference_cache
        if cache is not None and cache.exists():
            try:
                saved = checkpoints.load_tensors(cache)
            except AlarmError as e:
                warnings.warn(f"{e}; computing the reference log-probs again", stacklevel=2)
                saved = {}
            if isinstance(saved, dict) and saved.get("key") == key:
                self.ref_logps = saved["logps"]
                return self.ref_logps
        self.ref_logps = self.logprobs(list(range(len(self.rows))), reference=True)
        if cache is not None and self.accelerator.is_main_process:
            tmp = cache.with_name(f".tmp-{cache.name}")
            torch.save({"key": key, "logps": self.ref_logps}, tmp)
            os.replace(tmp, cache)
        return self.ref_logps

    # -- one optimizer step -------------------------------------------------------------------------------

    def pair_order(self, epoch: int) -> list[int]:
        """This epoch's pairs: prompts in a seeded random order, each prompt's pairs together (in random order).

        A step's pairs then share candidates, and each candidate is forwarded once per micro-batch: n candidates
        give n(n−1)/2 pairs over n sequences (all pairs of n = 4: 4 forwards instead of 12).
        """
        g = torch.Generator().manual_seed(self.config.seed + epoch)
        order = []
        for p in torch.randperm(len(self.pairs_by_prompt), generator=g).tolist():
            ks = self.pairs_by_prompt[p]
            order += [ks[k] for k in torch.randperm(len(ks), generator=g).tolist()]
        return order

    def step(self) -> dict[str, float]:
        """One optimizer step on ``batch_size`` pairs, shared out over the processes in micro-batches.

        Every process runs the same number of forward/backward passes (one short of pairs runs a zero-weight
        pass), or DDP's collectives pair up wrongly and hang. Each pair's loss is weighted by 1 / (pairs in
        the whole step), so the gradient and the logged numbers are the single-process ones for any split.
        """
        c, acc = self.config, self.accelerator
        t0 = time.perf_counter()
        ref = self.reference_logprobs()
        epoch, pos = divmod(self.step_idx, self.steps_per_epoch)
        chosen = self.pair_order(epoch)[pos * c.batch_size : (pos + 1) * c.batch_size]
        share = math.ceil(len(chosen) / acc.num_processes)  # contiguous shares keep a prompt's pairs together
        mine = chosen[acc.process_index * share : (acc.process_index + 1) * share]
        n_micro = math.ceil(share / c.micro_batch_size)
        scale = acc.num_processes / len(chosen)  # DDP averages over processes: this makes it a sum / len(chosen)
        self.policy.train()
        sums = torch.zeros(5, dtype=torch.float64)  # over this process's pairs: loss, β·Δρ, gap, (β·Δρ − gap)², hits
        for s in range(n_micro):
            idx = mine[s * c.micro_batch_size : (s + 1) * c.micro_batch_size]
            n = len(idx)
            idx = idx or chosen[:1]  # no pairs left here: a pass with weight 0 keeps the collectives in step
            i_idx = [self.pairs[k][0] for k in idx]
            j_idx = [self.pairs[k][1] for k in idx]
            best = [self.best[i] for i in i_idx] if c.loss in SFT_LOSSES else []  # SLiC's / RRHF's SFT targets
            rows = list(dict.fromkeys(i_idx + j_idx + best))  # each candidate once, in one forward pass
            at = {r: k for k, r in enumerate(rows)}
            with acc.no_sync(self.policy) if s < n_micro - 1 else nullcontext():  # all-reduce on the last one
                batch = self.collate(rows)
                with self.frozen_trunk(rows, batch):
                    logps = self.policy(batch)
                dev = logps.device
                logp_w, logp_l = logps[[at[i] for i in i_idx]], logps[[at[j] for j in j_idx]]
                drho = log_ratio_gap(logp_w, ref[i_idx].to(dev), logp_l, ref[j_idx].to(dev))
                gap = torch.tensor(self.gaps[idx], dtype=drho.dtype, device=dev)
                logp_best = logps[[at[b] for b in best]] if best else None
                loss = self.pair_loss(idx, logp_w, logp_l, logp_best, drho, gap)
                acc.backward(loss * (n * scale))
            if n:  # statistics of the real pairs only
                bd, g = c.beta * drho.detach().double().cpu(), gap.double().cpu()
                hits = (bd > 0).double() + 0.5 * (bd == 0).double()  # ranking accuracy, a tie counts half
                sums += torch.stack([loss.detach().double().cpu() * n, bd.sum(), g.sum(), ((bd - g) ** 2).sum(),
                                     hits.sum()])
        grad_norm = float("nan")
        if c.max_grad_norm is not None:
            grad_norm = float(acc.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_idx += 1
        means = (self._sum_over_processes(sums) / len(chosen)).tolist()  # over every process's pairs
        names = ("loss", "beta_delta_rho/mean", "gap/mean", "calibration/mse", "train/ranking_accuracy")
        return {"step": self.step_idx, "epoch": epoch, **dict(zip(names, means)),
                "grad_norm": grad_norm, "time/step": time.perf_counter() - t0}

    def pair_loss(self, idx: list[int], logp_w: torch.Tensor, logp_l: torch.Tensor, logp_best: torch.Tensor | None,
                  drho: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """The configured loss of pairs ``idx``: ``logp_w``, ``logp_l``, ``logp_best`` are the policy's summed
        log-probs of each pair's winner, loser and its prompt's best candidate (SLiC and RRHF read them);
        ``drho``, ``gap``: the pairs' log-ratio and normalised value gaps (what the reference-based losses read)."""
        c = self.config
        if c.loss in LOSSES:
            return LOSSES[c.loss](drho, gap, c.beta)
        if c.loss == "slic":
            return slic_loss(logp_w, logp_l, logp_best, c.resolved_slic_margin, c.resolved_sft_weight)
        tokens = self.n_tokens.to(device=logp_w.device, dtype=logp_w.dtype)
        share = torch.tensor(self.ft_share[idx], dtype=logp_w.dtype, device=logp_w.device)
        wins, loses = [self.pairs[k][0] for k in idx], [self.pairs[k][1] for k in idx]
        return rrhf_loss(logp_w, logp_l, tokens[wins], tokens[loses], logp_best, share, c.resolved_sft_weight)

    def _sum_over_processes(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all processes (one collective, the same on every rank)."""
        if self.accelerator.num_processes == 1:
            return t
        return self.accelerator.reduce(t.to(self.accelerator.device), reduction="sum").cpu()

    # -- diagnostics --------------------------------------------------------------------------------------

    def evaluate(self, greedy: bool | None = None) -> dict[str, float | None]:
        """Held-out diagnostics: corr(β·Δρ, normalised gap), ranking accuracy, calibration error; and the
        mean reward of greedy outputs on the held-out prompts."""
        c = self.config
        out: dict[str, float | None] = {"step": self.step_idx}
        if self.eval_pairs:
            ref = self.reference_logprobs()
            idx = sorted({k for p in self.eval_pairs for k in p})
            # Before the first update the policy is the reference (LoRA B = 0, or an exact copy): no forward pass.
            pol_lp = ref[idx] if self.step_idx == 0 else self.logprobs(idx)
            pol = dict(zip(idx, pol_lp.tolist()))
            drho = np.array([(pol[i] - float(ref[i])) - (pol[j] - float(ref[j])) for i, j in self.eval_pairs])
            out["eval/pairs"] = len(self.eval_pairs)
            out["eval/corr"] = pearson(c.beta * drho, self.eval_gaps)
            out["eval/ranking_accuracy"] = ranking_accuracy(drho)
            out["eval/calibration_mse"] = float(((c.beta * drho - self.eval_gaps) ** 2).mean())
            out["eval/beta_delta_rho_mean"] = float((c.beta * drho).mean())
        if (c.eval_greedy if greedy is None else greedy) and self.reward_set is not None and self.eval_prompts:
            out.update(self.greedy_reward())
        return out

    def greedy_reward(self) -> dict[str, float]:

        recs = self.eval_prompts
        texts = [t[0] for t in generate_texts(self.unwrapped.model, self.tokenizer, [r["prompt"] for r in recs],
                                              max_new_tokens=self.config.eval_max_new_tokens,
                                              batch_size=self.config.eval_batch_size)]
        prompts, columns = reward_inputs(recs)
        returns, stats = self.reward_set.sequence_rewards(prompts, texts, **columns)
        self.last_greedy = texts
        if self.accelerator.is_main_process:  # kept for inspection: what the diagnostics scored
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / f"greedy-step-{self.step_idx:06d}.jsonl", "w") as f:
                for r, t, ret in zip(recs, texts, returns):
                    f.write(json.dumps({"prompt_id": r["prompt_id"], "completion": t, "reward": ret}) + "\n")
        out = {"eval/greedy_reward_mean": float(np.mean(returns))}
        out.update({f"eval/greedy/{k}": float(v) for k, v in stats.items()})
        return out

    # -- the loop -----------------------------------------------------------------------------------------

    def train(self, steps: int | None = None, progress: bool = True) -> list[dict]:
        """Train to ``steps`` (default: epochs × pairs / batch_size, or max_steps); log to ``metrics.jsonl``."""
        from alarm.progress import Progress

        total = steps or self.total_steps
        acc, c = self.accelerator, self.config
        main = acc.is_main_process
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if c.report_to != "none":
            acc.init_trackers("alarm-vcb", config=c.model_dump(),
                              init_kwargs=tracker_kwargs(c.report_to, self.step_idx))
        history = []

        def log(m):
            history.append(m)
            log_metrics(acc, self.output_dir, m, c.report_to)

        if self.step_idx == 0 and c.eval_at_start:
            log(self.evaluate())
        saver = checkpoints.Saver(self.output_dir, c.save_every, total, main,
                                  agree=lambda wish: float(self._sum_over_processes(torch.tensor([float(wish)]))) > 0)
        with Progress(c.loss.upper(), total, completed=self.step_idx, enabled=progress and main,
                      transient=False) as bar:
            while self.step_idx < total:
                m = self.step()
                log(m)
                bar.update(completed=self.step_idx,
                           info=f"loss {m['loss']:.3f} acc {m['train/ranking_accuracy']:.2f} "
                                f"βΔρ {m['beta_delta_rho/mean']:+.2f}")
                last = self.step_idx == total
                if (c.eval_every and self.step_idx % c.eval_every == 0) or last:
                    log(self.evaluate())
                saver.after_step(self.step_idx, self.save_checkpoint)
        if c.report_to != "none":
            acc.end_training()
        return history

    # -- checkpoints (written to a temp dir, then renamed: a crash never leaves a half checkpoint) --------

    def save_checkpoint(self) -> Path:
        state = {"lora": self.config.lora, "loss": self.config.loss, "config": self.config.model_dump(),
                 "rewards": self.reward_set.state() if self.reward_set is not None else None}
        return checkpoints.save_checkpoint(self.accelerator, self.output_dir, self.step_idx, self.unwrapped.model,
                                           self.optimizer, state)

    latest_checkpoint = staticmethod(checkpoints.latest_checkpoint)

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load the latest (or given) checkpoint; returns the step training continues from (0 if none)."""
        state = checkpoints.restore(self.output_dir, path, self.unwrapped.model, self.optimizer,
                                    self.accelerator.process_index, {"lora": self.config.lora, "loss": self.config.loss},
                                    config=self.config.model_dump(),
                                    say=print if self.accelerator.is_main_process else lambda _: None)
        if self.accelerator.is_main_process:  # the log must end where the checkpoint does
            cut_metrics(self.output_dir, int(state["step"]) if state else -1)
        if state is None:
            return 0
        self.step_idx = int(state["step"])
        return self.step_idx


__all__ = [
    "LOSSES", "SFT_LOSSES", "Policy", "VCBConfig", "VCBTrainer", "dpo_loss", "ipo_loss", "log_ratio_gap",
    "make_pairs", "normalised_gaps", "pearson", "ranking_accuracy", "reward_scale", "rrhf_loss",
    "sequence_logprobs", "slic_loss", "vcb_hinge_loss", "vcb_loss",
]
