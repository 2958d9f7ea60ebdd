"""One training step, ours vs TRL's GRPOTrainer, on the same work, interleaved in one process.

    .venv/bin/python benchmarks/step_time.py                 # the real measurement (~10 min on 2 cores)
    .venv/bin/python benchmarks/step_time.py --tiny          # smoke test of the script (seconds)

The work of one step, the same in both trainers:
- SmolLM2-135M-Instruct in fp32 on the CPU, LoRA r16/α32/dropout 0.05 on q/k/v/o_proj;
- 8 completions from 4 quickstart prompts × 2 samples (GRPO needs ≥ 2 per prompt; our trainer gets the same
  8 prompt strings in the same order), exactly 64 new tokens each: ``min_new_tokens = max_new_tokens = 64``
  (EOS suppressed until then) via the model's generation config for ours and ``generation_kwargs`` for TRL;
- a reference-model KL term in both (ours: β·KL in the reward, TRL: ``beta`` = 0.04 in the loss), the
  reference being the same network with the LoRA adapters disabled in both;
- ``epochs`` passes over the batch (ours ``ppo_epochs`` = TRL ``num_iterations``), each as 2 mini-batches of
  4 with an optimiser step after each (TRL: ``per_device_train_batch_size`` 4, ``steps_per_generation`` 2,
  no gradient accumulation), gradient clipping at 1.0 in both; our KL early stop is disabled
  (``early_stop_kl`` huge) so both always run every pass;
- the same reward: length in words through the same ``RewardSet`` (ours natively, TRL via ``as_trl_reward``).
TRL settings that differ from its defaults, to match ours: ``gradient_checkpointing=False`` and
``bf16=False`` (ours is fp32 without checkpointing). Our trainer also runs its value head (PPO), TRL does not.

Alternating runs: TRL drives the loop; a callback at the start of each TRL step (one generation + all its
passes = 2 × epochs optimiser steps) first runs one step of each of our trainers, so ours and TRL's steps
alternate, each timed on its own (the callback's time is excluded from TRL's). The first ``warmup`` steps of
each are dropped; the table gives medians. Also measured: our hierarchical configuration (the quickstart's
rewards: reference similarity + grounding + relevance with the packaged MiniLM).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings

import common


def ppo_config(args):
    from alarm.trainers.ppo import PPOConfig

    return PPOConfig(max_new_tokens=args.new_tokens, rollout_batch_size=2 * args.prompts, mini_batch_size=args.mini,
                     grad_accum_steps=1, ppo_epochs=args.epochs, learning_rate=1e-5, max_grad_norm=1.0,
                     lora=True, lora_r=16, lora_alpha=32, lora_dropout=0.05, kl_coef=0.04, adaptive_kl=False,
                     early_stop_kl=1e9, steps=10_000, seed=0, **getattr(args, "config_overrides", {}))


def length_reward_set():
    from alarm.combine import CombineConfig, RewardSet
    from alarm.rewards.simple import LengthReward

    return RewardSet(CombineConfig(mode="holistic_only", holistic_weight=1.0), holistic=LengthReward(), normalize=())


def hierarchical_reward_set(records):
    """The quickstart's rewards, normalisers fitted on reference answers and first passages (a stand-in for
    initial-policy samples: it only has to give the normaliser a spread)."""
    from importlib import resources

    from alarm.config import build_reward_set, load_recipe

    recipe = load_recipe(str(resources.files("alarm") / "recipes" / "quickstart.yaml"), [])
    rs = build_reward_set(recipe)
    fit = records[:16]
    texts = [r["reference"] for r in fit] + [r["passages"][0] for r in fit]
    cols = {k: [r[k] for r in fit] * 2 for k in ("passages", "reference")}
    rs.fit([r["question"] for r in fit] * 2, texts, **cols)
    return rs


def load_ppo_module(path: str | None):
    """alarm.trainers.ppo, or another version of that file (``--before``: the code before a speed-up)."""
    if path is None:
        from alarm.trainers import ppo

        return ppo
    import importlib.util

    spec = importlib.util.spec_from_file_location("ppo_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def our_trainer(args, reward_set, records, out, ppo_file: str | None = None):
    ppo = load_ppo_module(ppo_file)
    model, tok = common.load_policy()
    common.force_length(model, args.new_tokens)
    cfg = ppo.PPOConfig(**ppo_config(args).model_dump())
    trainer = ppo.PPOTrainer(cfg, model, tok, reward_set, records, out)
    n = len(records)

    def same_prompts_as_trl(step):  # TRL (no shuffling): prompts 4k … 4k+3, each twice in a row
        return [records[(step * args.prompts + i) % n] for i in range(args.prompts) for _ in range(2)]

    trainer.prompt_batch = same_prompts_as_trl
    return trainer


def trl_trainer(args, records, callback, out):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from alarm.combine import as_trl_reward
    from alarm.trainers.ppo import attention_projections

    model, tok = common.load_policy()
    steps_per_gen = 2 * args.prompts // args.mini
    cycle = steps_per_gen * args.epochs
    cfg = GRPOConfig(
        output_dir=out, use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
        per_device_train_batch_size=args.mini, gradient_accumulation_steps=1, steps_per_generation=steps_per_gen,
        num_generations=2, num_iterations=args.epochs, beta=0.04, learning_rate=1e-5, max_grad_norm=1.0,
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": args.new_tokens}, shuffle_dataset=False,
        max_steps=cycle * (args.warmup + args.steps + 1), logging_steps=10_000, save_strategy="no",
        report_to="none", dataloader_num_workers=0, disable_tqdm=True,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=attention_projections(model),
                      task_type="CAUSAL_LM")
    data = Dataset.from_list([{"prompt": r["prompt"], "question": r["question"], "reference": r["reference"]}
                              for r in records])
    trainer = GRPOTrainer(model=model, reward_funcs=as_trl_reward(length_reward_set(), "length"), args=cfg,
                          train_dataset=data, processing_class=tok, peft_config=lora, callbacks=[callback])
    return trainer, cycle


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4, help="distinct prompts per step (× 2 samples)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="our ppo_epochs = TRL num_iterations (quickstart: 2)")
    p.add_argument("--mini", type=int, default=4, help="mini-batch size (8 / 4 = 2 mini-batches per pass)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=6, help="measured steps of each trainer")
    p.add_argument("--no-hier", action="store_true", help="skip our hierarchical configuration")
    p.add_argument("--threads", type=int, default=common.THREADS)
    p.add_argument("--tiny", action="store_true", help="smoke test: 8 tokens, 1+2 steps, no waiting")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for a quiet machine, then run anyway")
    p.add_argument("--name", default="step_time")
    p.add_argument("--before", metavar="PPO_FILE", help="also time this older copy of alarm/trainers/ppo.py")
    args = p.parse_args(argv)
    if args.tiny:
        args.new_tokens, args.warmup, args.steps = 8, 1, 2
    warnings.filterwarnings("ignore")
    threads = common.set_threads(args.threads)
    load = {"load1_at_start": round(common.load1(), 2)} if args.tiny else common.wait_until_quiet(args.max_load, args.max_wait)

    from transformers import TrainerCallback

    records = common.quickstart_records(common.load_policy()[1])
    tmp = tempfile.mkdtemp(prefix="alarm-bench-")
    ours = {"ours (length reward)": our_trainer(args, length_reward_set(), records, f"{tmp}/ours")}
    if args.before:
        ours["ours before speed-ups (length reward)"] = our_trainer(args, length_reward_set(), records,
                                                                    f"{tmp}/before", args.before)
    if not args.no_hier:
        ours["ours hierarchical (3 rewards)"] = our_trainer(args, hierarchical_reward_set(records), records,
                                                            f"{tmp}/hier")
    times = {"TRL GRPOTrainer (length reward)": [], **{k: [] for k in ours}}
    phases = {k: [] for k in ours}
    state = {"start": None}

    class Interleave(TrainerCallback):
        def on_step_begin(self, a, s, control, **kw):
            if s.global_step % cycle:
                return
            now = time.perf_counter()
            if state["start"] is not None:
                times["TRL GRPOTrainer (length reward)"].append(now - state["start"])
            for name, trainer in ours.items():
                t0 = time.perf_counter()
                m = trainer.step()
                times[name].append(time.perf_counter() - t0)
                phases[name].append({k: m[k] for k in m if k.startswith("time/") or k in ("ppo/epochs",
                                                                                         "length/tokens_max")})
                print(f"[bench] {name}: {times[name][-1]:.2f}s  {phases[name][-1]}", flush=True)
            if times["TRL GRPOTrainer (length reward)"]:
                print(f"[bench] TRL: {times['TRL GRPOTrainer (length reward)'][-1]:.2f}s", flush=True)
            state["start"] = time.perf_counter()

    trl, cycle = trl_trainer(args, records, Interleave(), f"{tmp}/trl")
    trl.train()
    load["load1_at_end"] = round(common.load1(), 2)

    w = args.warmup
    kept = {k: v[w : w + args.steps] for k, v in times.items()}
    trl_med = common.summary(kept["TRL GRPOTrainer (length reward)"])["median"]
    result = {"settings": {**vars(args), "completions_per_step": 2 * args.prompts, "torch_threads": threads,
                           "optimizer_steps_per_step": cycle, "trl": {"beta": 0.04, "num_generations": 2,
                           "gradient_checkpointing": False, "bf16": False}},
              "machine": common.machine(), "load": load,
              "step_time_s": {k: common.summary(v) for k, v in kept.items()},
              "ratio_to_trl": {k: round(common.summary(v)["median"] / trl_med, 3) for k, v in kept.items()},
              "our_phases_s": {k: {ph: common.summary([x[ph] for x in v[w:]])["median"] for ph in v[0]}
                               for k, v in phases.items()}}
    rows = [[k, f"{s['median']:.2f}", f"{s['min']:.2f}–{s['max']:.2f}", s["n"], f"{result['ratio_to_trl'][k]:.2f}"]
            for k, s in result["step_time_s"].items()]
    md = "\n\n".join([
        f"# Step time: ours vs TRL GRPOTrainer ({args.new_tokens} new tokens, {2 * args.prompts} completions/step)",
        common.md_table(["trainer", "median step (s)", "range (s)", "steps", "ratio to TRL"], rows),
        f"{args.epochs} passes × {2 * args.prompts // args.mini} mini-batches of {args.mini} per step "
        f"({cycle} optimiser steps), LoRA r16, fp32, torch threads {threads}; target ≤ 0.80 × TRL.",
        common.md_table(["our phase (median s)", *phases], [[ph, *[result["our_phases_s"][k][ph] for k in phases]]
                                                           for ph in next(iter(result["our_phases_s"].values()))]),
        common.machine_line(result["machine"], load)])
    common.write_results(args.name, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
