"""Batched generation for sampling, evaluation and the `generate` command (training rollouts live in PPO)."""

from __future__ import annotations

import ctypes
import functools
import gc
import platform

import torch

from alarm.models import is_seq2seq
from alarm.progress import Progress
from alarm.trainers.sequences import response_mask


@functools.cache
def _glibc():
    return ctypes.CDLL("libc.so.6") if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else None


def return_freed_memory() -> None:
    """Hand memory freed by earlier work back to the OS before a large generation: on glibc the C heap keeps freed
    blocks (a training phase leaves hundreds of MB of them), and a batch's key/value cache would come on top of
    them in the resident set; ``malloc_trim`` returns them. Changes no result; a no-op off glibc."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _shared_prompt_cache(model, enc: dict, copies: int) -> dict:
    """Prefill each distinct prompt once and give its key/value cache to its ``copies`` samples.

    A prompt's samples share its prefix, and on these short answers the prompt pass is most of the work: the
    prompts (all but their last token) run once, the cache is repeated per sample, and generate() goes on from
    there with the repeated inputs — the same positions (from the attention mask, as generate() computes them),
    the same random draws, a quarter of the prompt work for 4 samples. Returns generate()'s inputs: the repeated
    prompts and the cache."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
    cache, name = getattr(out, "cache", None), "cache"  # transformers ≥ 5.2x calls it cache, earlier 5.x not
    if cache is None:
        cache, name = out.past_key_values, "past_key_values"
    cache.batch_repeat_interleave(copies)
    return {"input_ids": ids.repeat_interleave(copies, 0), "attention_mask": mask.repeat_interleave(copies, 0),
            name: cache}


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
    # a prompt's samples share its pass when every batch holds whole groups of them
    share = do_sample and num_samples > 1 and not seq2seq and batch_size % num_samples == 0
    try:
        return_freed_memory()
        with Progress(progress or "", len(flat), enabled=progress is not None) as bar:
            for i in range(0, len(flat), batch_size):
                chunk = flat[i : i + batch_size]
                enc = tokenizer(chunk[::num_samples] if share else chunk, return_tensors="pt", padding=True,
                                add_special_tokens=seq2seq).to(model.device)
                with torch.inference_mode():
                    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                              **sampling)
                    if share:
                        enc = _shared_prompt_cache(model, enc, num_samples)
                    ids = model.generate(**enc, **kw)
                responses = ids[:, 1:] if seq2seq else ids[:, enc["input_ids"].shape[1] :]
                lengths = response_mask(responses, eos).sum(1).long().tolist()
                out += [tokenizer.decode(responses[j, :n], skip_special_tokens=True) for j, n in enumerate(lengths)]
                bar.update(advance=len(lengths))
                del ids, enc
                return_freed_memory()  # the batch's cache, before the next one builds its own
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [out[k * num_samples : (k + 1) * num_samples] for k in range(len(prompts))]
