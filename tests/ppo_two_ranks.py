"""Run by test_ppo under torch.distributed.run: two CPU ranks (gloo) train, then dump their parameters."""

import sys

import tiny
import torch
from accelerate import Accelerator

from alarm.combine import CombineConfig, RewardSet
from alarm.trainers.ppo import PPOConfig, PPOTrainer

out = sys.argv[1]
acc = Accelerator(cpu=True)
assert acc.num_processes == 2, acc.num_processes
rs = RewardSet(CombineConfig(mode="holistic_only"),
               holistic=lambda p, c, **k: [x.count("e") / (1 + len(x)) for x in c])
rs.fit(["a"] * 4, ["eee", "abc", "hello there", "x"])
prompts = [{"prompt": p} for p in ["The quick", "Paris is", "Water", "A question"]]
cfg = PPOConfig(max_new_tokens=8, rollout_batch_size=2, mini_batch_size=1, steps=2, lora=False, learning_rate=1e-3)
tr = PPOTrainer(cfg, tiny.causal_lm(), tiny.tokenizer(), rs, prompts, out, accelerator=acc)
tr.train(progress=False)
torch.save({k: v.detach().clone() for k, v in tr.unwrapped.state_dict().items()}, f"{out}/params_{acc.process_index}.pt")
