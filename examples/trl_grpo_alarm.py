"""GRPO in TRL (≥ 1.16) with ALaRM's hierarchical reward: the setup a user with a 7B policy and 8 GPUs runs.

The reward is a finished `alarm run` (its recipe, the normalisers and ε fitted on the initial policy, the
aspects reward selection kept), or a recipe + reward_state.json. Generation goes through vLLM:

  # (a) vLLM inside the training processes ("colocate"): one launch, vLLM takes a share of each GPU
  accelerate launch --config_file accelerate_configs/zero3.yaml --num_processes 8 \\
      examples/trl_grpo_alarm.py --model Qwen/Qwen2.5-7B-Instruct --run runs/qa --vllm colocate

  # (b) vLLM on its own GPUs ("server"): start it first, then train on the remaining GPUs
  CUDA_VISIBLE_DEVICES=0,1 trl vllm-serve --model Qwen/Qwen2.5-7B-Instruct --tensor-parallel-size 2
  CUDA_VISIBLE_DEVICES=2,3,4,5,6,7 accelerate launch --config_file accelerate_configs/zero3.yaml \\
      --num_processes 6 examples/trl_grpo_alarm.py --model Qwen/Qwen2.5-7B-Instruct --run runs/qa \\
      --vllm server --vllm-url http://127.0.0.1:8000

  # reward models on their own GPU, one copy for every rank (recommended for large reward models):
  CUDA_VISIBLE_DEVICES=7 alarm serve-reward --run runs/qa --port 5000   # then --reward-url below
  # ... examples/trl_grpo_alarm.py ... --reward-url http://127.0.0.1:5000

Without vLLM (``--vllm none``) it runs anywhere, slowly: a check of the wiring before a cluster run.

The data is a JSONL of QA records (``question``, ``passages``, ``reference``; default: alarm's packaged
quickstart set); the policy sees a chat prompt built from question and passages, the rewards read the
``question`` column (as in alarm's own PPO) and the other columns they need.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources


def qa_dataset(path: str | None):
    """Conversational GRPO prompts with the columns alarm's rewards read."""
    from datasets import Dataset

    src = path or str(resources.files("alarm") / "data" / "quickstart.jsonl")
    rows = []
    with open(src) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("split", "train") != "train":
                continue
            passages = "\n".join(f"[{i + 1}] {p}" for i, p in enumerate(r.get("passages", [])))
            content = f"Answer the question using the passages.\n\n{passages}\n\nQuestion: {r['question']}"
            rows.append({"prompt": [{"role": "user", "content": content}], "question": r["question"],
                         "passages": list(r.get("passages", [])), "reference": r.get("reference", "")})
    return Dataset.from_list(rows)


def remote_reward(url: str, timeout: float):
    """The combined reward computed by `alarm serve-reward` (async: TRL awaits it, the loop stays free)."""
    import asyncio

    import requests

    from alarm.rewards.remote import post_json

    session = requests.Session()
    endpoint = url.rstrip("/") + "/get_reward"

    async def alarm_remote(prompts, completions, question=None, reference=None, passages=None, log_metric=None,
                           **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        labels = [{"question": q, "reference": r, "passages": p}
                  for q, r, p in zip(question or [""] * len(texts), reference or [None] * len(texts),
                                     passages or [None] * len(texts))]
        body = {"responses": texts, "prompts": [lb["question"] for lb in labels], "labels": labels}
        out = await asyncio.to_thread(post_json, session, endpoint, body, timeout, 3, 1.0, "alarm reward server")
        if callable(log_metric):
            for k, v in out.get("extra_logs", {}).items():
                if v:
                    log_metric(f"alarm/{k}/mean", sum(v) / len(v))
        return out["rewards"]

    return alarm_remote


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="policy: hub id or local path (e.g. Qwen/Qwen2.5-7B-Instruct)")
    p.add_argument("--run", help="an alarm run directory (recipe, normalisers, ε, kept aspects)")
    p.add_argument("--config", help="a recipe YAML (with --state)")
    p.add_argument("--state", help="reward_state.json fitted on the initial policy")
    p.add_argument("--reward-url", help="alarm serve-reward URL instead of loading the rewards in every process")
    p.add_argument("--data", help="QA JSONL (question, passages, reference); default: the packaged quickstart set")
    p.add_argument("--output-dir", default="runs/trl_grpo_alarm")
    p.add_argument("--vllm", choices=["colocate", "server", "none"], default="colocate")
    p.add_argument("--vllm-url", default="http://127.0.0.1:8000", help="trl vllm-serve address (--vllm server)")
    p.add_argument("--vllm-memory", type=float, default=0.3, help="GPU share vLLM takes in colocate mode")
    p.add_argument("--split", action="store_true",
                   help="log holistic and gated aspects as two TRL columns (exact under sum_then_normalize only)")
    p.add_argument("--lora", action="store_true", help="LoRA r16 instead of full fine-tuning")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--per-device-batch", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.04, help="KL to the reference policy (0: no reference model)")
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--cpu", action="store_true", help="wiring check on a CPU (fp32, no vLLM)")
    args = p.parse_args(argv)

    from trl import GRPOConfig, GRPOTrainer

    gpu = not args.cpu
    config = GRPOConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, learning_rate=args.learning_rate, beta=args.beta,
        per_device_train_batch_size=args.per_device_batch, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, temperature=1.0, top_p=1.0,
        bf16=gpu, use_cpu=not gpu, gradient_checkpointing=gpu,
        # the one combined function is exact under both modes; the split needs sum_then_normalize
        multi_objective_aggregation="sum_then_normalize",
        use_vllm=gpu and args.vllm != "none", vllm_mode=args.vllm if args.vllm != "none" else "colocate",
        vllm_gpu_memory_utilization=args.vllm_memory, vllm_server_base_url=args.vllm_url if args.vllm == "server" else None,
        logging_steps=1, log_completions=True, save_steps=100, report_to="none",
    )
    callbacks = []
    if args.reward_url:
        reward_funcs = [remote_reward(args.reward_url, timeout=600.0)]
    else:
        from alarm.integrations.trl import AsyncAlarmReward

        reward = AsyncAlarmReward.from_run(run=args.run, config=args.config, state=args.state)
        reward_funcs = reward.split(config) if args.split else [reward]
        callbacks.append(reward.callback())
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=args.model, reward_funcs=reward_funcs, args=config, train_dataset=qa_dataset(args.data),
                          peft_config=peft_config, callbacks=callbacks)
    trainer.train()
    trainer.save_model(args.output_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
