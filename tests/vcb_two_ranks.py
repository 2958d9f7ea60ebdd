"""Run by test_vcb under torch.distributed.run: two CPU ranks (gloo) train VCB, then dump metrics and parameters.

12 training pairs in steps of 11, micro-batches of 5: step 1 gives rank 0 six pairs (two passes) and rank 1 five
(one pass); step 2 gives rank 0 the one pair left and rank 1 none.
"""

import json
import sys

import numpy as np
import tiny
import torch

from alarm.trainers.vcb import VCBConfig, VCBTrainer

CONFIG = dict(batch_size=11, micro_batch_size=5, max_steps=2, eval_greedy=False, learning_rate=1e-2)
TOP_ONLY = dict(lora_layers=[1])  # adapters on the top layer: layer 0's states are kept and replayed


def rows():
    """3 prompts × 4 candidates with distinct rewards: 2 training prompts (12 pairs), 1 held-out prompt."""
    rng = np.random.default_rng(0)
    words = ["the quick", "brown fox", "Paris is", "capital", "water boils", "answer"]
    return [{"prompt_id": f"p{p}", "split": "train" if p < 2 else "test", "prompt": f"Question {p}: {words[p]}?",
             "candidate": " ".join(rng.choice(words, 2)), "reward": float(c + 0.5 * p)}
            for p in range(3) for c in range(4)]


def trainable(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}


if __name__ == "__main__":
    from accelerate import Accelerator

    out = sys.argv[1]
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2, acc.num_processes
    config = {**CONFIG, **(TOP_ONLY if sys.argv[2:] == ["top"] else {})}
    tr = VCBTrainer(VCBConfig(**config), tiny.causal_lm(), tiny.tokenizer(), rows(), out, accelerator=acc)
    assert len(tr.pairs) == 12
    assert tr.unwrapped.trunk_depth == (1 if "lora_layers" in config else 0)
    history = tr.train(progress=False)
    rank = acc.process_index
    with open(f"{out}/history_{rank}.json", "w") as f:
        json.dump(history, f)
    torch.save(trainable(tr), f"{out}/params_{rank}.pt")
    assert len(tr.trunk) == (len(tr.rows) if tr.unwrapped.trunk_depth else 0)
