"""Item 4 of issue 17, what runs on a CPU: the shipped accelerate configs, and FSDP2 on two gloo ranks.

Not tested here (no GPU, no deepspeed): DDP/FSDP on NCCL, DeepSpeed ZeRO-2/3, bf16 mixed precision under
FSDP, CPU-RAM-efficient loading. DDP on two gloo ranks is tested in test_ppo.py, and here with the replayed
frozen trunk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from launch import run_two_ranks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "accelerate_configs"


def launch_env(config: str, port: int) -> dict:
    """The environment `accelerate launch --config_file <config> --num_processes 2` gives each rank."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / config), "--num_processes", "2",
                                               "--main_process_port", str(port), "script.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_shipped_accelerate_configs_are_what_accelerate_launch_reads():
    kinds = {}
    for name in ("ddp", "fsdp", "zero2", "zero3"):
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        kinds[name] = cfg["distributed_type"]
        if cfg["distributed_type"] == "DEEPSPEED":
            ds = json.loads((ROOT / cfg["deepspeed_config"]["deepspeed_config_file"]).read_text())
            # alarm's PPO prepares no dataloader: accelerate cannot infer the micro-batch, so it must be a number
            assert isinstance(ds["train_micro_batch_size_per_gpu"], int)
            assert isinstance(ds["gradient_accumulation_steps"], int)
            assert ds["zero_optimization"]["stage"] == int(name[-1])
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    env = launch_env("fsdp.yaml", 29650)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert launch_env("ddp.yaml", 29651)["ACCELERATE_MIXED_PRECISION"] == "bf16"


def _two_rank_run(tmp_path, config: str, port: int):
    import torch

    run_two_ranks("ppo_accelerate.py", tmp_path, port,
                  extra_env={**launch_env(config, port), "ACCELERATE_MIXED_PRECISION": "no"})
    return (torch.load(tmp_path / f"rank_{r}.pt", weights_only=False) for r in (0, 1))


@pytest.mark.multiprocess
def test_ppo_under_ddp_replays_the_frozen_trunk_and_keeps_ranks_in_step(tmp_path):
    import torch

    r0, r1 = _two_rank_run(tmp_path, "ddp.yaml", 29654)
    assert not r0["sharded"] and r0["trunk_depth"] == r1["trunk_depth"] == 1
    for r in (r0, r1):  # layer 0 ran only while sampling: 2 steps × (a reference pass + ≥ 1 update pass) fewer
        assert r["attention_calls"][1] - r["attention_calls"][0] >= 4, r["attention_calls"]
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    moved = [k for k in r0["params"] if not torch.equal(r0["params"][k], r0["before"][k])]
    assert moved and all("layers.1." in k or "value_head" in k for k in moved)


@pytest.mark.multiprocess
def test_ppo_under_fsdp2_on_two_gloo_ranks_keeps_ranks_in_step(tmp_path):
    import torch

    r0, r1 = _two_rank_run(tmp_path, "fsdp.yaml", 29652)
    assert r0["sharded"] and r1["sharded"] and len(r0["metrics"]) == 2
    assert r0["trunk_depth"] == r1["trunk_depth"] == 0  # sharded layers: every pass runs whole
    assert r0["attention_calls"][0] == r0["attention_calls"][1] > 0
    assert all(torch.isfinite(torch.tensor(m["return/mean"])) for m in r0["metrics"])
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k  # the ranks stayed in step
    moved = [k for k in r0["params"] if not torch.equal(r0["params"][k], r0["before"][k])]
    assert any("lora_B" in k for k in moved) and any("value_head" in k for k in moved)
    assert (tmp_path / "checkpoints" / "latest").exists()
