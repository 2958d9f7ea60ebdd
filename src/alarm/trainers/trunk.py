"""The frozen trunk: with LoRA on the top layers only, the bottom layers compute the same states in every pass
over a sequence (sampling, the reference pass, every update pass), so they are computed once and replayed
(docs/method.md §2.5; ``reuse_frozen_layers``). Which layers are frozen and may be replayed, recording their
output during a pass, replaying it in a later one, and taking it from PPO's sampling steps. The trainers keep
the recorded states (PPO for one rollout, VCB per candidate on the CPU).
"""

from __future__ import annotations

from contextlib import contextmanager
from itertools import accumulate

import torch
from accelerate.utils import DistributedType

from alarm.models import is_seq2seq
from alarm.trainers.configs import LoRASettings
from alarm.trainers.runtime import is_fsdp2
from alarm.trainers.sequences import Sequences


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The decoder layer stack of a causal LM (peft-wrapped or not), in call order; None for an unknown layout."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if is_seq2seq(base):
        return None
    try:
        inner = base.get_decoder()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    layers = getattr(inner, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) and len(layers) else None


def frozen_trunk_depth(model: torch.nn.Module) -> int:
    """How many bottom decoder layers of a causal LM have nothing to train.

    Why: with LoRA on the top layers only (``lora_layers``), the states leaving these layers are the same in
    the reference pass, the rollout and every PPO epoch, so they can be computed once per rollout and
    replayed (:func:`replaying_trunk`). 0 where that does not hold: trainable embeddings, a trainable bottom
    layer, an encoder-decoder, layers sharded with FSDP2 or a layer layout we do not know.
    """
    layers = decoder_layers(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text_config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if getattr(text_config, "num_kv_shared_layers", 0):  # Gemma 3n/4: top layers read a bottom layer's cache
        return 0
    emb = base.get_input_embeddings() if layers is not None else None
    if emb is None or any(p.requires_grad for p in emb.parameters()):
        return 0
    depth = 0
    for layer in layers:
        if is_fsdp2(layer) or any(p.requires_grad for p in layer.parameters()):
            break
        depth += 1
    return depth


def reusable_trunk_depth(model: torch.nn.Module, ref_model: torch.nn.Module | None, settings: LoRASettings,
                         accelerator=None) -> int:
    """:func:`frozen_trunk_depth` where replaying it is allowed: ``reuse_frozen_layers`` on, dropout off (every
    training pass would draw its own; :func:`disable_dropout` has then switched all of it off), the reference
    being the adapters-off network, and no sharding (FSDP, DeepSpeed: layers gather their parameters through
    their own hooks, and ranks decode in step) — neither through ``accelerator`` nor already on the layers."""
    if not (settings.reuse_frozen_layers and settings.disable_dropout and ref_model is None):
        return 0
    if accelerator is not None and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return 0
    return frozen_trunk_depth(model)


@contextmanager
def recording_trunk(model: torch.nn.Module, depth: int):
    """Yields a list that, after each forward pass inside, holds (a copy of) the output of the top frozen
    layer, [B, L, H]. Nothing is kept from a layer that returns a tuple (older layouts whose loop reads more
    than the states) or another shape (Gemma 3n's stacked [altup, B, L, H]): nothing is replayed then. Copies,
    because a compiled decode loop may reuse its output buffers."""
    states: list[torch.Tensor] = []
    if not depth:
        yield states
        return

    def keep(_module, _inputs, out):
        if isinstance(out, torch.Tensor) and out.dim() == 3:
            states.append(out.detach().clone())

    hook = decoder_layers(model)[depth - 1].register_forward_hook(keep)
    try:
        yield states
    finally:
        hook.remove()


@contextmanager
def replaying_trunk(model: torch.nn.Module, depth: int, batch: Sequences):
    """The bottom ``depth`` decoder layers return the states ``batch`` carries (``trunk_prompt`` [B, P, H] and
    ``trunk_response`` [B, T, H], what :func:`recording_trunk` kept for these sequences) instead of computing
    them; the layers above run as usual. A no-op for a batch without them."""
    if batch.trunk_prompt is None or not depth:
        yield
        return
    states = torch.cat([batch.trunk_prompt, batch.trunk_response], dim=1)
    layers = decoder_layers(model)[:depth]
    own = [layer.__dict__.get("forward") for layer in layers]  # e.g. accelerate's dispatch hook: put back after
    for layer in layers:
        layer.forward = lambda *_a, **_k: states  # the instance attribute shadows the class's forward
    try:
        yield
    finally:
        for layer, forward in zip(layers, own):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def sampled_trunk(steps: list[torch.Tensor], batch: Sequences, responses: torch.Tensor) -> dict:
    """The frozen layers' output over prompt + response from PPO's decoding steps (prompt, then one position a
    step), as ``trunk_prompt`` and ``trunk_response``. The last token is never fed back; its position gets zeros,
    read by no kept output (causal). Empty unless the loop was the plain prefill-then-one-token one."""
    P, T = batch.prompt_ids.shape[1], responses.shape[1]
    widths = [s.shape[1] for s in steps]
    ends = list(accumulate(widths))  # a chunked prefill ends at P too
    prefill = ends.index(P) + 1 if P in ends else None
    if prefill is None or widths[prefill:] != [1] * (T - 1):
        return {}  # not the plain prefill-then-one-token loop: the reference pass records its own
    states = torch.cat(steps, dim=1)
    return {"trunk_prompt": states[:, :P],
            "trunk_response": torch.cat([states[:, P:], states.new_zeros(states[:, :1].shape)], dim=1)}
