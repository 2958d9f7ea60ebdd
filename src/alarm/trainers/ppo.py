"""PPO with dense (token-level) rewards — the paper's training loop, readable top to bottom.

docs/method.md §2.4. One step = rollout (sample, score, reference log-probs, values) → per-token rewards minus
β·KL → GAE → a few epochs of clipped policy/value updates over mini-batches. Defaults are the paper's.

Three things the original code got wrong and this file gets right (each has a test):
- token rewards are placed on the positions actually generated (right-aligned responses, no left-padding
  of reward vectors), so no response loses its last-token reward;
- the first generated token is predicted from the last prompt position and receives gradient;
- the rewards that reach GAE sum to exactly what the combination layer assigned (plus the KL term).
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from alarm import checkpoints
from alarm.combine import RewardSet, over_nonempty
from alarm.data.prompts import reward_inputs
from alarm.errors import AlarmError
from alarm.models import is_seq2seq
from alarm.placement import token_char_ends
from alarm.trainers.configs import PPOConfig
from alarm.trainers.runtime import (
    cut_metrics,
    is_fsdp2,
    log_metrics,
    make_accelerator,
    make_optimizer,
    tracker_kwargs,
)
from alarm.trainers.sequences import (
    Sequences,
    entropy_from_logits,
    eos_ids,
    logprobs_from_logits,
    masked_mean,
    policy_or_reference,
    response_logits,
    response_mask,
    trainable_with_reference,
)
from alarm.trainers.trunk import recording_trunk, replaying_trunk, reusable_trunk_depth, sampled_trunk

# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------
# The math: pure functions on tensors (tested against loop-based references)
# ----------------------------------------------------------------------------------------------------------


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, reduce=None, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the masked entries; masked-out entries become 0.

    ``reduce`` sums a tensor over processes, so all ranks whiten with the same global statistics.
    """
    stats = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double()
    if reduce is not None:
        stats = reduce(stats)
    total, sq, n = stats.tolist()
    n = max(n, 1.0)
    mean = total / n
    var = max(sq / n - mean * mean, 0.0) * (n / max(n - 1.0, 1.0))
    out = (x - mean) / math.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens; ``mask`` marks generated positions.

    A response ends at its last masked position (the value after it is 0). Returns (advantages, returns).
    """
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        nm = mask[:, t + 1] if t + 1 < T else torch.zeros_like(m)
        delta = rewards[:, t] + gamma * next_value * nm - values[:, t]
        last = (delta + gamma * lam * nm * last) * m
        adv[:, t] = last
        next_value = values[:, t]
    returns = (adv + values) * mask
    return adv, returns


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate: mean over tokens of max(−A·ρ, −A·clip(ρ, 1±ε)). Returns (loss, clipfrac, approx_kl)."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean((ratio - 1) - log_ratio, mask)  # k3 estimator, ≥ 0
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """0.5 · max((V − R)², (V_clipped − R)²) with V_clipped = V_old + clip(V − V_old, ±ε_v)."""
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask)
    clipfrac = masked_mean(((v_clipped - returns) ** 2 > (values - returns) ** 2).float(), mask)
    return loss, clipfrac.detach()


@dataclass
class KLController:
    """β for the per-token KL penalty; adaptive: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""

    value: float = 0.2
    adaptive: bool = True
    target: float = 6.0
    horizon: int = 10_000

    def update(self, kl: float, n: int) -> None:
        if self.adaptive:
            error = max(-0.2, min(0.2, kl / self.target - 1.0))
            self.value *= 1.0 + error * n / self.horizon


@dataclass(kw_only=True)
class Rollout(Sequences):
    """One PPO rollout: its prompts and sampled responses (:class:`Sequences`) and what the update reads about
    each response token, [B, T] (0 past a response's end)."""

    # log π of each token under the sampling policy and under the reference, and the sampling policy's values
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    # the combined rewards as assigned (what the metrics report), and the rewards GAE saw (minus β·KL and the
    # group baseline)
    scores: torch.Tensor
    rewards: torch.Tensor
    # GAE's advantages (whitened when the config says so) and returns
    advantages: torch.Tensor
    returns: torch.Tensor


_PROMPT_COLUMNS = ("prompt_ids", "prompt_mask", "trunk_prompt")  # the other columns are response positions


def trim_padding(batch: Rollout) -> Rollout:
    """A mini-batch without the columns that are padding in every row: prompt columns (left- or right-padded)
    and response positions past its longest response. Exact: positions come from the masks, attention is
    causal within the response, and padded positions carry no loss."""
    keep = batch.prompt_mask.any(0).nonzero().squeeze(-1)
    lo, hi = int(keep[0]), int(keep[-1]) + 1
    t = int(batch.mask.sum(1).max())
    return replace(batch, **{f.name: v[:, lo:hi] if f.name in _PROMPT_COLUMNS else v[:, :t]
                             for f in fields(batch) if (v := getattr(batch, f.name)) is not None})


def leave_one_out_mean(totals: torch.Tensor, k: int) -> torch.Tensor:
    """For each entry, the mean of the other k − 1 entries of its group (consecutive groups of k): RLOO's
    baseline, independent of the response it is subtracted from, so the policy gradient stays unbiased."""
    groups = totals.reshape(-1, k)
    return ((groups.sum(1, keepdim=True) - groups) / (k - 1)).reshape(-1)


def place_scores(token_rewards: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """[B, T] tensor holding each response's reward vector on its own generated positions (left-aligned)."""
    scores = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    lengths = mask.sum(1).long().tolist()
    for i, r in enumerate(token_rewards):
        if len(r) != lengths[i]:
            raise RuntimeError(f"reward vector of response {i} has {len(r)} entries for {lengths[i]} tokens")
        scores[i, : lengths[i]] = r.to(scores.dtype)
    return scores


# ----------------------------------------------------------------------------------------------------------
# The policy: a language model (LoRA by default) plus a value head on its last hidden state
# ----------------------------------------------------------------------------------------------------------

class PolicyWithValue(torch.nn.Module):
    """The trained language model and a scalar value head reading its last hidden state."""

    def __init__(self, model: torch.nn.Module, config: PPOConfig, accelerator=None):
        super().__init__()
        self.is_encoder_decoder = is_seq2seq(model)
        self.model, self.ref_model = trainable_with_reference(model, config)
        hidden = model.config.get_text_config().hidden_size if hasattr(model.config, "get_text_config") \
            else model.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        if config.value_head_init == "zeros":
            torch.nn.init.zeros_(self.value_head.weight)
        else:
            torch.nn.init.normal_(self.value_head.weight, std=1.0 / math.sqrt(hidden + 1))
        torch.nn.init.zeros_(self.value_head.bias)
        # Bottom layers without adapters: the same in policy and reference, so computed once per rollout.
        self.trunk_depth = reusable_trunk_depth(self.model, self.ref_model, config, accelerator)

    def forward(self, batch: Sequences, with_values: bool = True, reference: bool = False):
        """Logits (and values) at the positions that predict each response token: [B, T, V] and [B, T].
        A batch with ``trunk_prompt``/``trunk_response`` (see :meth:`recording_trunk`) skips the frozen layers."""
        net, ctx = policy_or_reference(self.model, self.ref_model, reference)
        with ctx, replaying_trunk(net, self.trunk_depth, batch):
            logits, hidden = response_logits(net, batch, self.is_encoder_decoder, with_hidden=with_values)
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1) if with_values else None
        return logits, values

    @contextmanager
    def recording_trunk(self, batch: Sequences):
        """Yields a dict that, after one forward pass of ``batch`` inside, holds the states leaving the frozen
        layers split at the prompt's end: ``trunk_prompt`` [B, P, H] and ``trunk_response`` [B, T, H] (sliced
        and trimmed with the rest of a mini-batch). Empty when nothing can be reused, or ``batch`` already
        carries them."""
        found: dict[str, torch.Tensor] = {}
        with recording_trunk(self.model, 0 if batch.trunk_prompt is not None else self.trunk_depth) as states:
            yield found
        if len(states) == 1:
            P = batch.prompt_ids.shape[1]
            found.update(trunk_prompt=states[0][:, :P], trunk_response=states[0][:, P:])

    @property
    def full_precision(self) -> bool:
        """float32/float64 weights. In bf16/fp16 the sampling pass (KV cache, merged LoRA) and a full forward
        pass round differently (tiny bf16 Llama: mean |ratio − 1| = 3e-4 at the start of the update with
        merged LoRA, 1e-4 unmerged, 0 with a forward pass), so low-precision policies sample with adapters
        unmerged and take their rollout log-probs and values from the update's own forward pass."""
        return all(p.dtype in (torch.float32, torch.float64) for p in self.model.parameters()
                   if p.is_floating_point())

    @contextmanager
    def merged_adapters(self):
        """LoRA folded into the base weights while sampling: no per-token adapter matmuls in the decode loop.

        The base weights are restored bit for bit afterwards (merge then unmerge alone would leave rounding
        drift in the reference model). A no-op without LoRA, and for low-precision weights (see
        :attr:`full_precision`: merging would quantise small adapter updates into bf16 base weights).
        """
        from peft.tuners.lora import LoraLayer

        merge = self.ref_model is None and self.full_precision
        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)] if merge else []
        saved = [m.get_base_layer().weight.detach().clone() for m in layers]
        if layers:
            self.model.merge_adapter()
        try:
            yield
        finally:
            if layers:
                self.model.unmerge_adapter()
                with torch.no_grad():
                    for m, w in zip(layers, saved):
                        m.get_base_layer().weight.copy_(w)


# ----------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------


@contextmanager
def fsdp2_gathered(module: torch.nn.Module):
    """Every FSDP2 (``fully_shard``) parameter of ``module`` unsharded for the duration, then resharded."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        yield
        return
    if not isinstance(module, FSDPModule):
        yield
        return
    mods = [m for m in module.modules() if isinstance(m, FSDPModule)]
    module._get_fsdp_state()._lazy_init()  # the root first, as its own forward would (else: "not the root")
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


# generation_config settings that reshape the sampled distribution beyond temperature, top-p and top-k (which PPO
# sets itself). The log-probs come from the raw tempered logits, so sampling with any of these would make the
# ratio and the KL describe another distribution than the one sampled: PPO samples without them, and says so.
RESHAPING = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
             "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "min_p", "typical_p", "top_h",
             "epsilon_cutoff", "eta_cutoff", "min_length", "min_new_tokens", "forced_bos_token_id",
             "forced_eos_token_id", "forced_decoder_ids", "suppress_tokens", "begin_suppress_tokens",
             "exponential_decay_length_penalty", "guidance_scale", "watermarking_config", "num_beams",
             "num_beam_groups", "diversity_penalty", "dola_layers", "penalty_alpha")


def reshaping_settings(model) -> dict:
    """The :data:`RESHAPING` settings ``model.generation_config`` sets to something other than their default."""
    from transformers import GenerationConfig

    fresh = GenerationConfig()
    defaults = fresh._get_default_generation_params() if hasattr(fresh, "_get_default_generation_params") else {}
    config = getattr(model, "generation_config", None)
    found = {}
    for name in RESHAPING:
        value = getattr(config, name, None)
        if value is None or value == getattr(fresh, name, None) or (name in defaults and value == defaults[name]):
            continue
        found[name] = value
    return found


@contextmanager
def without_reshaping(model, names):
    """``model.generation_config`` with the settings ``names`` at their neutral defaults, put back after."""
    from transformers import GenerationConfig

    config, fresh = model.generation_config, GenerationConfig()
    saved = {name: getattr(config, name) for name in names}
    for name in names:
        setattr(config, name, getattr(fresh, name, None))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


class PPOTrainer:
    """Online PPO on a prompt set with an ALaRM :class:`RewardSet`.

    ``prompts``: list of dicts with a ``"prompt"`` string (already formatted for the policy) and any extra
    columns the rewards read (``reference``, ``passages``, ``question`` …).
    """

    def __init__(self, config: PPOConfig, model, tokenizer, reward_set: RewardSet, prompts: list[dict],
                 output_dir: str | os.PathLike, accelerator=None):
        if not prompts:
            raise AlarmError("the prompt set is empty; give at least one training prompt")
        missing = [i for i, p in enumerate(prompts) if not isinstance(p.get("prompt"), str)]
        if missing:
            raise AlarmError(f"prompt record {missing[0]} has no 'prompt' string; every record needs one")
        self.config = config
        self.tokenizer = tokenizer
        self.reward_set = reward_set
        self.prompts = prompts
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator or make_accelerator(config.report_to, output_dir)
        torch.manual_seed(config.seed)  # same value-head init on every rank
        policy = PolicyWithValue(model, config, self.accelerator)
        self.optimizer = make_optimizer(policy, config.learning_rate, config.weight_decay)
        self.policy, self.optimizer = self.accelerator.prepare(policy, self.optimizer)
        self.kl = KLController(config.kl_coef, config.adaptive_kl, config.adaptive_kl_target, config.kl_horizon)
        self.step_idx = 0
        self.eos_ids = eos_ids(self.unwrapped.model, tokenizer)
        if tokenizer.pad_token_id is None:
            raise AlarmError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to the EOS token)")
        self._seed_everything(config.seed + self.accelerator.process_index)
        self.reshaping = reshaping_settings(self.unwrapped.model)
        if self.reshaping and self.accelerator.is_main_process:
            warnings.warn("PPO samples without the policy's generation_config settings "
                          f"{', '.join(f'{k}={v!r}' for k, v in self.reshaping.items())}: they reshape the sampled "
                          "distribution, which the log-probs (tempered logits, top-p/top-k from ppo.*) would not "
                          "describe; evaluation and `alarm generate` still use them", stacklevel=2)

    # -- helpers ------------------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> PolicyWithValue:
        return self.accelerator.unwrap_model(self.policy)

    @property
    def sampling_pass_is_exact(self) -> bool:
        """Whether the sampling pass computes what the reference and update passes compute, so the rollout's
        log-probs and values can come from it: float32/64 weights *and* no mixed precision. Decided by the
        precision the passes run in, not the weights' dtype alone: under accelerate's bf16/fp16 autocast the
        forward passes (reference, update) run autocast while ``generate`` does not, and their log-probs
        differ (tiny Llama: mean |old − ref| 3e-4 per token at policy = reference, instead of 0)."""
        return self.unwrapped.full_precision and self.accelerator.mixed_precision == "no"

    def _tempered(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of the distribution actually sampled from (temperature applied): old, new and reference
        log-probs all use it, so the ratio and the KL refer to the sampling policy (TRL does the same)."""
        return logits if self.config.temperature == 1.0 else logits / self.config.temperature

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum") if self.accelerator.num_processes > 1 else t

    def _reduce_mean(self, x: float) -> float:
        if self.accelerator.num_processes == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="mean").item())

    def _global_stats(self, values: dict[str, float], weights: dict[str, float],
                      maxima: tuple[str, ...] = (), totals: tuple[str, ...] = ()) -> dict[str, float]:
        """``values`` of every process combined, in ONE collective over the sorted keys: the weighted mean
        (each process's value counts ``weights[k]`` times, default 1; the plain mean where no process has
        weight), for the keys in ``maxima`` the maximum, for those in ``totals`` the sum.

        One collective of a size every process knows: one all-reduce per key pairs the processes' calls up
        wrongly, and hangs, as soon as one process's key set differs.
        """
        keys = sorted(values)
        v = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        w = torch.tensor([float(weights.get(k, 1.0)) for k in keys], dtype=torch.float64)
        local = torch.stack([torch.where(w > 0, v * w, 0.0), w, v])[None]  # [1, 3, K]
        if self.accelerator.num_processes > 1:
            local = self.accelerator.gather(local.to(self.accelerator.device)).cpu()  # [processes, 3, K]
        weighted, weight, plain = local.sum(0)
        mean = torch.where(weight > 0, weighted / weight.clamp(min=1e-12), plain / local.shape[0])
        highest = local[:, 2].max(0).values
        total = local[:, 2].sum(0)
        return {k: float(highest[i] if k in maxima else total[i] if k in totals else mean[i])
                for i, k in enumerate(keys)}

    def prompt_batch(self, step: int) -> list[dict]:
        """The prompts of step ``step`` on this process: a seeded shuffle per pass, sharded by rank, each prompt
        repeated ``samples_per_prompt`` times in a row (a group stays on one process).

        A pure function of (seed, step), so a resumed run sees exactly the prompts it would have seen.
        """
        c = self.config
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        k = c.samples_per_prompt
        P = c.rollout_batch_size // k  # distinct prompts per process
        n = len(self.prompts)
        start = step * P * world
        out = []
        for i in range(start + rank * P, start + rank * P + P):
            epoch, j = divmod(i, n)
            perm = np.random.default_rng(c.seed + epoch).permutation(n)
            out.extend([self.prompts[int(perm[j])]] * k)
        return out

    # -- rollout ------------------------------------------------------------------------------------------

    def encode_prompts(self, records: list[dict]) -> Sequences:
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "right" if self.unwrapped.is_encoder_decoder else "left"
        try:
            enc = tok([r["prompt"] for r in records], return_tensors="pt", padding=True,
                      add_special_tokens=self.unwrapped.is_encoder_decoder)
        finally:
            tok.padding_side = side
        dev = self.accelerator.device
        return Sequences(prompt_ids=enc["input_ids"].to(dev), prompt_mask=enc["attention_mask"].to(dev))

    def generate(self, batch: Sequences, with_policy_outputs: bool = False):
        """:meth:`_generate` with every FSDP2 shard gathered (a no-op without FSDP).

        Why: generate() calls the inner model, not the FSDP root, so the root's parameters (embeddings, LM
        head, value head) would still be sharded DTensors; and ranks decode for different numbers of steps,
        so gathering per layer per step would pair collectives up wrongly. All shards are gathered once,
        kept through the decode loop, and resharded after.
        """
        with torch.no_grad(), fsdp2_gathered(self.policy):  # gathered outside inference mode (see make_experience)
            return self._generate(batch, with_policy_outputs)

    @torch.inference_mode()
    def _generate(self, batch: Sequences, with_policy_outputs: bool = False):
        """Sampled response token ids [B, T] (padding after EOS), temperature/top-p/top-k from the config.

        ``with_policy_outputs``: also return ``(logits [B, T, V], values [B, T], trunk)`` of the sampling pass
        itself, so the rollout needs no second forward pass of the policy, and the reference pass computes
        only the adapted layers: ``trunk`` holds what the frozen layers emitted (see
        :meth:`PolicyWithValue.recording_trunk`; empty when there is no frozen trunk).
        """
        c = self.config
        policy = self.unwrapped
        policy.eval()
        # The value head reads the decoder's last hidden state; a hook keeps only the newest position of each
        # decoding step (output_hidden_states would hold every layer, and the encoder's, for the whole rollout).
        last_states: list[torch.Tensor] = []
        decoder = policy.model.get_base_model() if hasattr(policy.model, "get_base_model") else policy.model
        hook = decoder.get_decoder().register_forward_hook(
            lambda _m, _i, out: last_states.append(out[0][:, -1])) if with_policy_outputs else None
        trunk_depth = policy.trunk_depth if with_policy_outputs else 0
        try:
            with policy.merged_adapters(), recording_trunk(policy.model, trunk_depth) as trunk_steps, \
                    without_reshaping(policy.model, self.reshaping):
                out = policy.model.generate(
                    input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, do_sample=True,
                    temperature=c.temperature, top_p=c.top_p, top_k=c.top_k, max_new_tokens=c.max_new_tokens,
                    eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id,
                    return_dict_in_generate=True, output_logits=with_policy_outputs,
                )
        finally:
            if hook is not None:
                hook.remove()
        start = 1 if policy.is_encoder_decoder else batch.prompt_ids.shape[1]  # drop the decoder start token
        responses = out.sequences[:, start:]
        if not with_policy_outputs:
            return responses
        # Step t's raw (unprocessed) logits predict token t; the state at its newest position gives the value.
        logits = torch.stack(out.logits, dim=1)
        hidden = torch.stack(last_states[: logits.shape[1]], dim=1)
        values = policy.value_head(hidden.to(policy.value_head.weight.dtype)).squeeze(-1)
        return responses, (logits, values, sampled_trunk(trunk_steps, batch, responses))


    def make_experience(self, records: list[dict], batch: Sequences, responses: torch.Tensor,
                        policy_outputs: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Everything PPO needs about a rollout: masks, texts, rewards, log-probs, values, advantages.

        ``policy_outputs``: the (logits, values[, trunk]) :meth:`generate` returned for these responses;
        without them the policy's forward pass is run here.
        """
        c = self.config
        mask = response_mask(responses, self.eos_ids)
        if mask.sum(1).min() == 0:
            raise RuntimeError("a response has no generated tokens (max_new_tokens must be ≥ 1)")
        batch = batch.with_responses(responses, mask, self.unwrapped.model, self.tokenizer)

        # Score: decode exactly the generated tokens, map reward positions onto them, combine.
        t0 = time.perf_counter()
        lengths = mask.sum(1).long().tolist()
        texts, ends = [], []
        for i, n in enumerate(lengths):
            text, e = token_char_ends(self.tokenizer, responses[i, :n].tolist())
            texts.append(text)
            ends.append(e)
        prompts_for_rewards, columns = reward_inputs(records)
        combined, raw = self.reward_set.combine(prompts_for_rewards, texts, ends, **columns)
        scores = place_scores(combined.token_rewards, mask).to(responses.device)
        shaped = scores
        if c.group_baseline:  # each response's return minus the mean return of its prompt's other responses
            baseline = leave_one_out_mean(scores.sum(1), c.samples_per_prompt)
            shaped = scores.clone()
            shaped[torch.arange(len(lengths)), torch.tensor(lengths) - 1] -= baseline
        t_score = time.perf_counter() - t0

        # Forward passes without gradient: the reference (keeping the frozen layers' output unless sampling
        # kept it), then the rollout policy's log-probs and values unless sampling returned them.
        t0 = time.perf_counter()
        policy = self.unwrapped
        policy.eval()
        logits, values, *sampled = policy_outputs or (None, None)
        batch = replace(batch, **(sampled[0] if sampled else {}))
        # FSDP2 allocates its gathered parameters in the mode it runs in: inference tensors from here could
        # not be written by the update's all-gathers later, so FSDP gets no_grad instead.
        with torch.no_grad() if is_fsdp2(self.policy) else torch.inference_mode():
            with policy.recording_trunk(batch) as recorded:
                ref_logits, _ = policy(batch, with_values=False, reference=True)
            batch = replace(batch, **recorded)
            ref_logprobs = logprobs_from_logits(self._tempered(ref_logits), responses) * mask
            del ref_logits
            if logits is None:
                logits, values = policy(batch)
            logits = self._tempered(logits)
            old_logprobs = logprobs_from_logits(logits, responses) * mask
            entropy = masked_mean(entropy_from_logits(logits), mask).item()
            del logits
        if batch.trunk_prompt is not None:  # out of inference mode: the update's autograd reads them
            batch = replace(batch, trunk_prompt=batch.trunk_prompt.clone(), trunk_response=batch.trunk_response.clone())
        t_forward = time.perf_counter() - t0

        kl = (old_logprobs - ref_logprobs) * mask
        rewards = shaped - self.kl.value * kl
        values = values.float() * mask
        adv, returns = gae(rewards, values, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            adv = masked_whiten(adv, mask, reduce=self._reduce_sum)
        exp = Rollout(**vars(batch), old_logprobs=old_logprobs.clone(), ref_logprobs=ref_logprobs.clone(),
                      old_values=values.clone(), scores=scores, rewards=rewards.clone(), advantages=adv.clone(),
                      returns=returns.clone())
        info = {"texts": texts, "combined": combined, "raw": raw, "entropy": entropy,
                "kl_seq": float(kl.sum(1).mean()), "time/score": t_score, "time/forward": t_forward}
        return exp, info

    # -- update -------------------------------------------------------------------------------------------

    def update(self, exp: Rollout) -> dict[str, float]:
        """``ppo_epochs`` passes over mini-batches; stop early when the policy drifts past the KL limit."""
        c = self.config
        B = exp.responses.shape[0]
        self.policy.train()
        stats = {"pg_loss": [], "vf_loss": [], "clipfrac": [], "vf_clipfrac": [], "approx_kl": []}
        stopped_early, epochs_run, skipped = False, 0, 0
        g = torch.Generator().manual_seed(c.seed + self.step_idx)
        for _epoch in range(c.ppo_epochs):
            order = torch.randperm(B, generator=g).tolist()
            minis = [order[i : i + c.mini_batch_size] for i in range(0, B, c.mini_batch_size)]
            epoch_kl = []
            for j, idx in enumerate(minis):
                mb = trim_padding(exp.rows(idx))
                logits, values = self.policy(mb)
                logprobs = logprobs_from_logits(self._tempered(logits), mb.responses)
                del logits
                pg, clipfrac, approx_kl = policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.mask, c.cliprange)
                vf, vf_clipfrac = value_loss(values.float(), mb.old_values, mb.returns, mb.mask, c.cliprange_value)
                loss = (pg + c.vf_coef * vf) / c.grad_accum_steps
                ratio = masked_mean(torch.exp(logprobs.detach() - mb.old_logprobs), mb.mask)
                if c.ratio_threshold is not None and float(ratio) > c.ratio_threshold:
                    loss, skipped = loss * 0.0, skipped + 1  # zeroed, not skipped: DDP's backward stays in step
                self.accelerator.backward(loss)
                last = j == len(minis) - 1
                if (j + 1) % c.grad_accum_steps == 0 or last:
                    if c.max_grad_norm is not None:
                        self.accelerator.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in zip(stats, (pg, vf, clipfrac, vf_clipfrac, approx_kl)):
                    stats[k].append(v.item())
                epoch_kl.append(float(approx_kl))
            epochs_run += 1
            # Every rank must take the same decision, or the next collective op deadlocks.
            if self._reduce_mean(float(np.mean(epoch_kl))) > c.early_stop_kl:
                stopped_early = True
                break
        out = {f"ppo/{k}": float(np.mean(v)) for k, v in stats.items()}
        out["ppo/epochs"] = float(epochs_run)
        out["ppo/early_stopped"] = float(stopped_early)
        out["ppo/skipped_minibatches"] = float(skipped)
        return out

    # -- one step and the loop ----------------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        records = self.prompt_batch(self.step_idx)
        t_start = time.perf_counter()
        batch = self.encode_prompts(records)
        t0 = time.perf_counter()
        if self.sampling_pass_is_exact:
            responses, policy_outputs = self.generate(batch, with_policy_outputs=True)
        else:  # bf16/fp16 weights or autocast: the rollout log-probs come from a forward pass (exact ratio 1)
            responses, policy_outputs = self.generate(batch), None
        t_gen = time.perf_counter() - t0
        exp, info = self.make_experience(records, batch, responses, policy_outputs)
        t0 = time.perf_counter()
        ppo_stats = self.update(exp)
        t_update = time.perf_counter() - t0

        # Statistics of the whole step over all processes, each weighted by what this process's value averages.
        n = exp.responses.shape[0]
        kept = n - sum(info["combined"].empty)
        local = {**info["combined"].stats, "kl": info["kl_seq"], "entropy": info["entropy"],
                 "score/mean": float(exp.scores.sum(1).mean()), "length/tokens_max": float(exp.mask.sum(1).max()),
                 **ppo_stats}
        weights = {k: float(kept if over_nonempty(k) else n) for k in info["combined"].stats}
        weights.update({"kl": n, "entropy": float(exp.mask.sum()), "score/mean": n})  # ppo/*: 1 per process
        metrics = {"step": self.step_idx + 1, **self._global_stats(local, weights, maxima=("length/tokens_max",),
                                                                   totals=("ppo/skipped_minibatches",))}
        metrics.update({
            "beta": self.kl.value,
            "time/generate": t_gen, "time/score": info["time/score"], "time/forward": info["time/forward"],
            "time/update": t_update, "time/step": time.perf_counter() - t_start,
        })
        self.kl.update(metrics["kl"], n * self.accelerator.num_processes)
        self.step_idx += 1
        self.last_texts = info["texts"]
        return metrics

    def train(self, steps: int | None = None, progress: bool = True, on_step=None) -> list[dict]:
        """Run until ``steps`` (default: the config's) total steps; metrics go to ``metrics.jsonl``."""
        total = steps or self.config.steps
        acc = self.accelerator
        main = acc.is_main_process
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.config.report_to != "none":
            acc.init_trackers("alarm", config=self.config.model_dump(),
                              init_kwargs=tracker_kwargs(self.config.report_to, self.step_idx))
        history = []
        from alarm.progress import Progress

        saver = checkpoints.Saver(self.output_dir, self.config.save_every, total, main,
                                  agree=lambda wish: self._reduce_mean(float(wish)) > 0)
        with Progress("PPO", total, completed=self.step_idx, enabled=progress and main, transient=False) as bar:
            while self.step_idx < total:
                m = self.step()
                history.append(m)
                log_metrics(acc, self.output_dir, m, self.config.report_to)
                info = (f"return {m['return/mean']:+.2f} gate {m.get('gate_open_rate', 0):.2f} "
                        f"kl {m['kl']:.2f} len {m['length/tokens']:.0f}")
                bar.update(completed=self.step_idx, info=info)
                if on_step is not None:
                    on_step(m)
                saver.after_step(self.step_idx, self.save_checkpoint)
        if self.config.report_to != "none":
            acc.end_training()
        return history

    # -- checkpoints --------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Adapter (or model), value head, optimizer, β, reward normalisation, RNG, step — atomically."""
        state = {"beta": self.kl.value, "rewards": self.reward_set.state(), "lora": self.config.lora,
                 "config": self.config.model_dump()}
        full = None
        if is_fsdp2(self.policy):  # gather the shards (a collective: every rank)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            whole = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            full = {"model": {k.removeprefix("model."): v for k, v in whole.items() if k.startswith("model.")},
                    "value_head": {k.removeprefix("value_head."): v for k, v in whole.items()
                                   if k.startswith("value_head.")}}
        return checkpoints.save_checkpoint(self.accelerator, self.output_dir, self.step_idx, self.unwrapped.model,
                                           self.optimizer, state,
                                           tensors={"value_head": full["value_head"] if full else
                                                    self.unwrapped.value_head.state_dict()},
                                           model_state_dict=full["model"] if full else None)

    latest_checkpoint = staticmethod(checkpoints.latest_checkpoint)

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load the latest (or given) checkpoint; returns the step it continues from (0 if none)."""
        state = checkpoints.restore(self.output_dir, path, self.unwrapped.model, self.optimizer,
                                    self.accelerator.process_index, {"lora": self.config.lora},
                                    config=self.config.model_dump(),
                                    say=print if self.accelerator.is_main_process else lambda _: None)
        if self.accelerator.is_main_process:  # the log must end where the checkpoint does
            cut_metrics(self.output_dir, int(state["step"]) if state else 0)
        if state is None:
            return 0
        from safetensors.torch import load_file

        try:
            head = load_file(str(Path(state["path"]) / "value_head.safetensors"))
            self.unwrapped.value_head.load_state_dict(head)
        except (OSError, RuntimeError, ValueError) as e:
            raise AlarmError(f"checkpoint {state['path']}: its value head cannot be loaded "
                             f"({(str(e).splitlines() or [type(e).__name__])[0][:160]}); pick another with "
                             "--resume PATH") from None
        if "beta" not in state or "rewards" not in state:
            raise AlarmError(f"checkpoint {state['path']} is damaged (trainer_state.json has no β or reward "
                             "state); pick another with --resume PATH")
        self.kl.value = float(state["beta"])
        self.reward_set.load_state(state["rewards"])
        self.step_idx = int(state["step"])
        return self.step_idx
