"""Run by test_scale on two gloo CPU ranks, with the environment `accelerate launch` derives from a shipped
config file: PPO on a tiny model, then each rank saves the gathered parameters and the step metrics.

accelerate turns FSDP on for GPUs only, so with ACCELERATE_USE_FSDP set the script switches the accelerator's
state to FSDP by hand; the plugin (FSDP version, wrap policy, resharding, state-dict type) is the one the
config file's environment describes, and the sharding itself is torch's, on gloo.
"""

import os
import sys
import warnings

import tiny
import torch
from accelerate import Accelerator

from alarm.combine import CombineConfig, HierarchyWarning, RewardSet
from alarm.trainers.ppo import PPOConfig, PPOTrainer

out = sys.argv[1]
torch.set_num_threads(1)
acc = Accelerator(cpu=True)
if os.environ.get("ACCELERATE_USE_FSDP") == "true":
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # every setting from the FSDP_* environment
assert acc.num_processes == 2, acc.num_processes
warnings.simplefilter("ignore", HierarchyWarning)
rs = RewardSet(CombineConfig(mode="hierarchical", epsilon=0.0),
               holistic=lambda p, c, **k: [float(len(x)) for x in c],
               aspects={"e": lambda p, c, **k: [float(x.count("e")) for x in c]})
rs.fit(["q"] * 4, ["a", "bb", "ccc", "dddd"])
prompts = [{"prompt": p} for p in ["The quick", "Paris is", "Water boils", "A question:"]]
# Adapters on the top layer only, so layer 0 is a frozen trunk (replayed under DDP, not under FSDP).
cfg = PPOConfig(max_new_tokens=6, rollout_batch_size=2, mini_batch_size=1, steps=2, lora_layers=[1],
                learning_rate=1e-3, lora_r=4, lora_alpha=8)
tr = PPOTrainer(cfg, tiny.causal_lm(), tiny.tokenizer(), rs, prompts, out, accelerator=acc)


def full_params() -> dict:
    """Every parameter, whole, on every rank (FSDP2 shards are gathered)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(tr.policy, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().cpu().clone() for k, v in state.items()}


from torch.distributed.fsdp import FSDPModule  # noqa: E402

# Attention calls of the frozen layer 0 and the adapted layer 1: equal when every pass runs whole; with the
# replay, layer 0 runs only while sampling.
calls = {i: tiny.attention_calls(tr.unwrapped.model, i)[0] for i in (0, 1)}
before = full_params()
metrics = tr.train(progress=False)
torch.save({"metrics": metrics, "sharded": isinstance(tr.policy, FSDPModule), "before": before, "params": full_params(),
            "trunk_depth": tr.unwrapped.trunk_depth, "attention_calls": {i: len(c) for i, c in calls.items()}}, f"{out}/rank_{acc.process_index}.pt")
