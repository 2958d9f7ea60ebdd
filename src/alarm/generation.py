"""Batched generation for sampling, evaluation and the `generate` command (training rollouts live in PPO)."""

from __future__ import annotations

import torch

from alarm.models import is_seq2seq
from alarm.progress import Progress
from alarm.trainers.sequences import response_mask


def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, do_sample: bool = False,
                   num_samples: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                   batch_size: int = 16, progress: str | None = None, seed: int | None = None) -> list[list[str]]:
    """``num_samples`` completions per prompt (greedy by default), decoded up to the first EOS. ``seed``: sample
    from a torch random state seeded with it (the global one is left as it was), so two policies sampled with
    the same seed draw the same random numbers and differ only where the policies do."""
    if seed is not None and do_sample:
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return generate_texts(model, tokenizer, prompts, max_new_tokens, do_sample, num_samples, temperature,
                                  top_p, top_k, batch_size, progress)
    seq2seq = is_seq2seq(model)
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    flat = [p for p in prompts for _ in range(num_samples)]
    out: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right" if seq2seq else "left"
    was_training = model.training
    model.eval()
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    try:
        with Progress(progress or "", len(flat), enabled=progress is not None) as bar:
            for i in range(0, len(flat), batch_size):
                enc = tokenizer(flat[i : i + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=seq2seq).to(model.device)
                with torch.inference_mode():
                    ids = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                         pad_token_id=tokenizer.pad_token_id, **sampling)
                responses = ids[:, 1:] if seq2seq else ids[:, enc["input_ids"].shape[1] :]
                lengths = response_mask(responses, eos).sum(1).long().tolist()
                out += [tokenizer.decode(responses[j, :n], skip_special_tokens=True) for j, n in enumerate(lengths)]
                bar.update(advance=len(lengths))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [out[k * num_samples : (k + 1) * num_samples] for k in range(len(prompts))]
