"""What PPO, VCB and generation share about a policy and its responses: one place for each.

- the prompts and responses a forward pass reads (:class:`Sequences`; PPO's rollout extends it);
- which tokens of a response count (up to and including the first EOS) and which ids are EOS;
- log-probabilities of response tokens, from one forward pass laid out the same way for causal and
  encoder-decoder policies (the first response token is predicted from the last prompt position);
- the LoRA settings both trainer configs embed, and the trained model + reference built from them
  (adapters disabled = reference: no second copy), with dropout off so repeated passes agree.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from typing import Self

import torch
import torch.nn.functional as F

from alarm.errors import AlarmError
from alarm.models import is_seq2seq
from alarm.trainers.configs import LoRASettings

# ---------------------------------------------------------------------------------------------- sequences


@dataclass
class Sequences:
    """Prompts and responses laid out as a policy's forward pass reads them (:func:`response_logits`): PPO's
    rollout (:class:`alarm.trainers.ppo.Rollout`) and VCB's candidates. Every tensor has the batch first."""

    # prompts [B, P]: causal prompts left-padded, encoder inputs right-padded; the mask 1 on real tokens
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    # responses [B, T], right-padded, and 1 on their tokens up to and including the first EOS (None: prompts only)
    responses: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    # encoder-decoder policies only: the teacher-forcing inputs of :func:`decoder_inputs`, [B, T]
    decoder_input_ids: torch.Tensor | None = None
    decoder_mask: torch.Tensor | None = None
    # the frozen layers' output over the prompt [B, P, H] and the response [B, T, H] when replayed
    # (alarm.trainers.trunk; None: the pass computes them)
    trunk_prompt: torch.Tensor | None = None
    trunk_response: torch.Tensor | None = None

    def rows(self, index) -> Self:
        """The same structure holding only rows ``index`` of every tensor."""
        return self._map(lambda v: v[index])

    def to(self, device) -> Self:
        """The same structure with every tensor on ``device``."""
        return self._map(lambda v: v.to(device))

    def with_responses(self, responses: torch.Tensor, mask: torch.Tensor, model, tokenizer) -> Self:
        """These prompts with ``responses`` and their ``mask``, and for an encoder-decoder ``model`` its
        teacher-forcing inputs (:func:`decoder_inputs`)."""
        teacher = decoder_inputs(model, tokenizer, responses, mask) if is_seq2seq(model) else {}
        return replace(self, responses=responses, mask=mask, **teacher)

    def _map(self, fn) -> Self:
        return replace(self, **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None})


# ---------------------------------------------------------------------------------------------- responses


def eos_ids(model, tokenizer) -> list[int]:
    """The EOS ids generation stops at: the model's generation config, else the tokenizer's."""
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    eos = tokenizer.eos_token_id if eos is None else eos
    if eos is None:
        raise AlarmError("the tokenizer defines no EOS token; responses end at EOS, so set one")
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


def response_mask(responses: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """1 for generated tokens up to and including the first EOS; 0 after it (padding)."""
    if eos_token_id is None:
        return torch.ones_like(responses, dtype=torch.float32)
    eos = torch.tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=responses.device)
    is_eos = torch.isin(responses, eos).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS strictly before this position
    return (eos_before == 0).float()


def decoder_inputs(model, tokenizer, responses: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher-forcing inputs of an encoder-decoder policy: the start token, then the response shifted right."""
    start = model.config.decoder_start_token_id
    start = tokenizer.pad_token_id if start is None else start
    return {"decoder_input_ids": torch.cat([torch.full_like(responses[:, :1], start), responses[:, :-1]], dim=1),
            "decoder_mask": torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], dim=1).long()}


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token) for each position: ``logits`` [B, T, V], ``tokens`` [B, T] → [B, T]."""
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def response_logits(net, batch: Sequences, is_encoder_decoder: bool, with_hidden: bool = False):
    """Logits [B, T, V] at the positions that predict each response token (and the last hidden states
    there, [B, T, H], when ``with_hidden``). ``batch``: prompts, responses, and for encoder-decoder the
    :func:`decoder_inputs`."""
    T = batch.responses.shape[1]
    if is_encoder_decoder:
        out = net(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                  decoder_input_ids=batch.decoder_input_ids, decoder_attention_mask=batch.decoder_mask,
                  output_hidden_states=with_hidden)
        return out.logits, (out.decoder_hidden_states[-1] if with_hidden else None)
    ids = torch.cat([batch.prompt_ids, batch.responses], dim=1)
    attn = torch.cat([batch.prompt_mask, batch.mask.long()], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # left-padded prompts: positions count real tokens only
    # The token at P + t is predicted from position P + t − 1: the first response token from the last prompt
    # position (so it receives gradient). Only those T positions need logits: the LM head skips the prompt.
    out = net(input_ids=ids, attention_mask=attn, position_ids=pos, output_hidden_states=with_hidden,
              logits_to_keep=T + 1, use_cache=False)
    P = batch.prompt_ids.shape[1]
    hidden = out.hidden_states[-1][:, P - 1 : P - 1 + T] if with_hidden else None
    return out.logits[:, :T], hidden


# ------------------------------------------------------------------------------------------- LoRA + reference


_ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "q", "k", "v", "o", "query", "key", "value",
                    "c_attn", "c_proj", "qkv_proj", "out_proj", "Wqkv")


def attention_projections(model: torch.nn.Module) -> list[str]:
    """Names of the attention projection layers of ``model`` (the default LoRA targets)."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and ("attn" in n.lower() or "attention" in n.lower())}
    found = sorted(n for n in names if n in _ATTENTION_NAMES)
    if not found:
        raise AlarmError("could not find attention projections for LoRA; set lora_target_modules in the config")
    return found


def disable_dropout(model: torch.nn.Module) -> int:
    """Switch off every dropout in ``model``: dropout modules and the attention-dropout rates that attention
    layers keep as plain floats (Llama's ``attention_dropout``). Returns how many were on.

    Why: the RL losses compare two forward passes of the same weights (old vs new log-probs, policy vs
    reference). With dropout on in one of them they differ by noise: on a T5 with dropout 0.1 the approximate
    KL before any update is ~0.2, above PPO's early-stop limit, and VCB's Δρ at initialisation is not 0.
    """
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            m.p, n = 0.0, n + 1
        for attr in ("attention_dropout", "attn_dropout", "dropout", "dropout_p", "activation_dropout"):
            v = getattr(m, attr, None)
            if isinstance(v, float) and v > 0:
                setattr(m, attr, 0.0)
                n += 1
    return n


def trainable_with_reference(model: torch.nn.Module, settings: LoRASettings) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(trained model, reference) from :class:`LoRASettings`.

    LoRA: the reference is the same network with adapters disabled (returned as None: no second copy in
    memory). Full fine-tuning: the reference is a frozen copy (in eval mode: no dropout).
    """
    if settings.disable_dropout:
        disable_dropout(model)
    if not settings.lora:
        return model, copy.deepcopy(model).eval().requires_grad_(False)
    from peft import LoraConfig, TaskType, get_peft_model

    seq2seq = is_seq2seq(model)
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=settings.lora_target_modules or attention_projections(model),
                      layers_to_transform=settings.lora_layers,
                      task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM)
    peft_model = get_peft_model(model, lora)
    if settings.disable_dropout:
        disable_dropout(peft_model)  # LoRA's own dropout too
    return peft_model, None


def policy_or_reference(model, ref_model, reference: bool):
    """``(network, context)`` to run: the policy, or the reference — the frozen copy, or (LoRA) the policy with
    its adapters disabled inside the context."""
    if reference and ref_model is not None:
        return ref_model, nullcontext()
    if reference:
        return model, model.disable_adapter()
    return model, nullcontext()
