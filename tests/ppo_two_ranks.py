"""Run by test_ppo under torch.distributed.run: two CPU ranks (gloo) train, then dump what each rank saw.

Rank 1's batches are all empty (every response is EOS at once): combine() then has no non-empty response on
that rank, which is where per-rank key sets and per-rank means went wrong. Each rank writes its rollouts
(advantages and what GAE read, its local combination stats), the step metrics and its parameters.
"""

import sys
import warnings

import tiny
import torch
from accelerate import Accelerator

from alarm.combine import CombineConfig, HierarchyWarning, RewardSet
from alarm.trainers.ppo import PPOConfig, PPOTrainer

out = sys.argv[1]
acc = Accelerator(cpu=True)
assert acc.num_processes == 2, acc.num_processes
# Two prompts: each rank's batch holds both. "The quick" opens the gate (z = +0.58), "Paris is" does not
# (z = −1.73); the unshaped aspect of −100 then sinks the open response below the closed one (a violation).
warnings.simplefilter("ignore", HierarchyWarning)
rs = RewardSet(CombineConfig(mode="hierarchical", epsilon=0.0, unshaped=("sink",)),
               holistic=lambda p, c, **k: [float(x == "The quick") for x in p],
               aspects={"sink": lambda p, c, **k: [-100.0] * len(c)})
rs.fit(["The quick"] * 3 + ["Paris is"], ["a", "b", "c", "d"])
prompts = [{"prompt": p} for p in ["The quick", "Paris is"]]
cfg = PPOConfig(max_new_tokens=8, rollout_batch_size=2, mini_batch_size=1, steps=2, lora=False, learning_rate=1e-3)
tr = PPOTrainer(cfg, tiny.causal_lm(), tiny.tokenizer(), rs, prompts, out, accelerator=acc)

if acc.process_index == 1:
    def all_empty(batch, with_policy_outputs=False):
        responses = torch.full_like(batch.prompt_ids[:, :1], tr.eos_ids[0])
        return (responses, None) if with_policy_outputs else responses

    tr.generate = all_empty

rollouts = []
make_experience = tr.make_experience


def recording(*args, **kwargs):
    exp, info = make_experience(*args, **kwargs)
    rollouts.append({"advantages": exp.advantages, "rewards": exp.rewards, "values": exp.old_values,
                     "mask": exp.mask, "stats": dict(info["combined"].stats), "empty": info["combined"].empty,
                     "entropy": info["entropy"]})
    return exp, info


tr.make_experience = recording
metrics = tr.train(progress=False)
rank = acc.process_index
torch.save({"rollouts": rollouts, "metrics": metrics}, f"{out}/rank_{rank}.pt")
torch.save({k: v.detach().clone() for k, v in tr.unwrapped.state_dict().items()}, f"{out}/params_{rank}.pt")
