"""One training step, ours vs TRL's GRPOTrainer on the same work, and our rollout vs plain ``model.generate``.

    python -m benchmarks.step_time                  # LoRA on every layer in both (~7 min on 2 cores)
    python -m benchmarks.step_time --lora-top 10    # LoRA on the top 10 layers in both
    python -m benchmarks.step_time --smoke          # tiny random models, seconds: that the script runs

The work of one step, the same in both trainers:
- SmolLM2-135M-Instruct in fp32 on the CPU, LoRA r16/α32/dropout 0.05 on q/k/v/o_proj of every layer, or with
  ``--lora-top N`` of the top N layers only in both (TRL through peft's ``layers_to_transform``; ours through
  ``lora_layers``, where the frozen trunk below the adapters is replayed: ``ppo.reuse_frozen_layers``);
- 8 completions from 4 quickstart prompts × 2 samples (GRPO needs ≥ 2 per prompt; our trainer gets the same
  8 prompt strings in the same order), exactly 64 new tokens each: ``min_new_tokens = max_new_tokens = 64``
  (EOS suppressed until then) via the model's generation config for ours and ``generation_kwargs`` for TRL;
- a reference-model KL term in both (ours: β·KL in the reward, TRL: ``beta`` = 0.04 in the loss), the
  reference being the same network with the LoRA adapters disabled in both;
- ``epochs`` passes over the batch (ours ``ppo_epochs`` = TRL ``num_iterations``), each as 2 mini-batches of
  4 with an optimiser step after each (TRL: ``per_device_train_batch_size`` 4, ``steps_per_generation`` 2,
  no gradient accumulation), gradient clipping at 1.0 in both; our KL early stop is disabled
  (``early_stop_kl`` huge) so both always run every pass;
- the same rewards: the quickstart's three (reference similarity, grounding, relevance with the packaged
  MiniLM, combined hierarchically) through the same ``RewardSet`` (ours natively, TRL via ``as_trl_reward``);
  ``--length-reward``: a length reward instead.
TRL settings that differ from its defaults, to match ours: ``gradient_checkpointing=False`` and
``bf16=False`` (ours is fp32 without checkpointing). Our trainer also runs its value head (PPO), TRL does not.

Interleaved: TRL drives the loop; a callback at the start of each TRL step (one generation + all its passes =
2 × epochs optimiser steps) first samples our next batch with plain ``model.generate`` on a separate copy of
the base model (no LoRA, no trainer; the same prompt tensors, sampling, the same length), then runs one step of
our trainer; each is timed on its own (the callback's time is excluded from TRL's). Our step's metrics split
it into generate, score (decode + rewards + combination), forward (the reference pass) and update; our
rollout = generate + score + forward, everything before the update. The first ``warmup`` rounds are dropped;
the tables give medians.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

# `python benchmarks/<script>.py` puts benchmarks/ first on the path, not the repository: put the repository
# first, so `benchmarks` is this package (pysbd installs a top-level `benchmarks` package of its own).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

TRL = "TRL GRPOTrainer"
OURS = "alarm PPO"
PLAIN = "plain model.generate"


def ppo_config(args, lora_layers=None):
    from alarm.trainers.ppo import PPOConfig

    return PPOConfig(max_new_tokens=args.new_tokens, rollout_batch_size=2 * args.prompts, mini_batch_size=args.mini,
                     grad_accum_steps=1, ppo_epochs=args.epochs, learning_rate=1e-5, max_grad_norm=1.0,
                     lora=True, lora_r=16, lora_alpha=32, lora_dropout=0.05, kl_coef=0.04, adaptive_kl=False,
                     early_stop_kl=1e9, steps=10_000, seed=0, lora_layers=lora_layers)


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


def our_trainer(args, reward_set, records, out, lora_layers=None, **overrides):
    """Our PPO trainer on the benchmark's work, fed TRL's prompt order (no shuffling: prompts 4k … 4k+3, each
    twice in a row)."""
    from alarm.trainers.ppo import PPOConfig, PPOTrainer

    model, tok = common.policy_and_tokenizer()
    common.force_length(model, args.new_tokens)
    cfg = PPOConfig(**{**ppo_config(args, lora_layers).model_dump(), **overrides})
    trainer = PPOTrainer(cfg, model, tok, reward_set, records, out)
    # PPO samples without generation_config settings that reshape the distribution (min_new_tokens among them);
    # the benchmark needs them, so both trainers do the same work: every response exactly new_tokens long
    trainer.reshaping.pop("min_new_tokens", None)
    make = trainer.make_experience

    def same_length(*a, **k):
        exp, info = make(*a, **k)
        shortest = int(exp.mask.sum(1).min())
        assert shortest == args.new_tokens, f"a response of {shortest} tokens: the two trainers' work would differ"
        return exp, info

    trainer.make_experience = same_length
    n = len(records)

    def same_prompts_as_trl(step):
        return [records[(step * args.prompts + i) % n] for i in range(args.prompts) for _ in range(2)]

    trainer.prompt_batch = same_prompts_as_trl
    return trainer


def trl_trainer(args, reward_set, records, callback, out, lora_layers=None):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from alarm.combine import as_trl_reward
    from alarm.trainers.sequences import attention_projections

    model, tok = common.policy_and_tokenizer()
    steps_per_gen = 2 * args.prompts // args.mini
    cycle = steps_per_gen * args.epochs
    cfg = GRPOConfig(
        output_dir=out, use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
        per_device_train_batch_size=args.mini, gradient_accumulation_steps=1, steps_per_generation=steps_per_gen,
        num_generations=2, num_iterations=args.epochs, beta=0.04, learning_rate=1e-5, max_grad_norm=1.0,
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": args.new_tokens}, shuffle_dataset=False,
        max_steps=cycle * (args.warmup + args.steps), logging_steps=10_000, save_strategy="no",
        report_to="none", dataloader_num_workers=0, disable_tqdm=True,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=attention_projections(model),
                      layers_to_transform=lora_layers, task_type="CAUSAL_LM")
    data = Dataset.from_list([{"prompt": r["prompt"], "question": r["question"], "reference": r["reference"],
                               "passages": r["passages"]} for r in records])
    trainer = GRPOTrainer(model=model, reward_funcs=as_trl_reward(reward_set, "alarm_rewards"), args=cfg,
                          train_dataset=data, processing_class=tok, peft_config=lora, callbacks=[callback])
    if lora_layers is not None:  # peft put the adapters where asked, and nowhere else
        adapted = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in trainer.model.named_parameters()
                   if "lora_" in n}
        assert adapted == set(lora_layers), sorted(adapted)
    return trainer, cycle


def options(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4, help="distinct prompts per step (× 2 samples)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="our ppo_epochs = TRL num_iterations (quickstart: 2)")
    p.add_argument("--mini", type=int, default=4, help="mini-batch size (8 / 4 = 2 mini-batches per pass)")
    p.add_argument("--lora-top", type=int, default=0, help="LoRA on the top N layers in both (0: every layer)")
    p.add_argument("--length-reward", action="store_true", help="a length reward instead of the quickstart's three")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="measured steps of each trainer")
    common.common_args(p, "step_time")
    args = p.parse_args(argv)
    if args.smoke:  # the MiniLM rewards would take most of the time: tests/test_benchmarks.py builds them
        args.prompts, args.mini, args.epochs, args.new_tokens, args.warmup, args.steps = 2, 2, 1, 4, 0, 1
        args.length_reward = True
    if args.name == "step_time" and args.lora_top:
        args.name = f"step_time_top{args.lora_top}"
    return args


def main(argv=None) -> int:
    args = options(argv)
    warnings.filterwarnings("ignore")
    load = common.start(args)

    import torch
    from transformers import TrainerCallback

    plain, tok = common.policy_and_tokenizer()
    plain.eval()
    lora_layers = common.top_layers(plain, args.lora_top)
    records = common.quickstart_records(tok)[: 4 if args.smoke else None]
    rewards = length_reward_set() if args.length_reward else hierarchical_reward_set(records)
    tmp = tempfile.mkdtemp(prefix="alarm-bench-")
    ours = our_trainer(args, rewards, records, f"{tmp}/ours", lora_layers)
    times = {TRL: [], OURS: [], PLAIN: []}
    phases = []
    state = {"start": None}

    def plain_generate():
        batch = ours.encode_prompts(ours.prompt_batch(ours.step_idx))
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = plain.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0, min_new_tokens=args.new_tokens,
                                 max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
        assert out.shape[1] - batch.prompt_ids.shape[1] == args.new_tokens
        return time.perf_counter() - t0

    class Interleave(TrainerCallback):
        def on_step_end(self, a, s, control, **kw):  # global_step already counts the step that ended
            if s.global_step % cycle == 0:
                times[TRL].append(time.perf_counter() - state["start"])
                print(f"[bench] {TRL}: {times[TRL][-1]:.2f}s", flush=True)

        def on_step_begin(self, a, s, control, **kw):
            if s.global_step % cycle:
                return
            times[PLAIN].append(plain_generate())
            t0 = time.perf_counter()
            m = ours.step()
            times[OURS].append(time.perf_counter() - t0)
            assert m["length/tokens_max"] == args.new_tokens, m["length/tokens_max"]
            phases.append({k[5:]: m[k] for k in m if k.startswith("time/")})
            print(f"[bench] {PLAIN}: {times[PLAIN][-1]:.2f}s; {OURS}: {times[OURS][-1]:.2f}s {phases[-1]}",
                  flush=True)
            state["start"] = time.perf_counter()

    trl, cycle = trl_trainer(args, rewards, records, Interleave(), f"{tmp}/trl", lora_layers)
    trl.train()
    load["load1_at_end"] = round(common.load1(), 2)

    w, n = args.warmup, args.steps
    kept = {k: v[w : w + n] for k, v in times.items()}
    rows = [{**p, "rollout": p["generate"] + p["score"] + p["forward"]} for p in phases[w : w + n]]
    med = {k: common.summary(v) for k, v in kept.items()}
    ph = {k: common.summary([r[k] for r in rows]) for k in rows[0]}
    m = {k: v["median"] for k, v in ph.items()}
    result = {"settings": {**vars(args), "completions_per_step": 2 * args.prompts, "lora_layers": lora_layers,
                           "optimizer_steps_per_step": cycle, "reward_set": reward_name(args),
                           "trl": {"beta": 0.04, "num_generations": 2, "gradient_checkpointing": False,
                                   "bf16": False, "layers_to_transform": lora_layers}},
              "machine": common.machine(), "load": load,
              "step_time_s": {TRL: med[TRL], OURS: med[OURS]},
              "ratio_to_trl": round(med[OURS]["median"] / med[TRL]["median"], 3),
              "plain_generate_s": med[PLAIN], "our_phases_s": ph,
              "rollout_ratio_to_plain_generate": round(m["rollout"] / med[PLAIN]["median"], 3),
              "generate_ratio_to_plain_generate": round(m["generate"] / med[PLAIN]["median"], 3),
              "share_of_step": {k: round(m[k] / m["step"], 3) for k in ("generate", "score", "forward", "update")}}
    common.write_results(args.name, result, markdown(result), args.out)
    return 0


def reward_name(args) -> str:
    return "length" if args.length_reward else "quickstart (3 MiniLM rewards, hierarchical)"


def layers_label(settings: dict) -> str:
    layers = settings["lora_layers"]
    return "LoRA on every layer" if layers is None else f"LoRA on the top {len(layers)} layers ({layers[0]}–{layers[-1]})"


def markdown(r: dict) -> str:
    s, m = r["settings"], {k: v["median"] for k, v in r["our_phases_s"].items()}
    steps = [[k, f"{v['median']:.2f}", f"{v['min']:.2f}–{v['max']:.2f}", v["n"]] for k, v in r["step_time_s"].items()]
    plain = r["plain_generate_s"]["median"]
    roll = [[PLAIN + " (base model)", f"{plain:.2f}", "1.00"],
            ["our generate (LoRA policy)", f"{m['generate']:.2f}", f"{r['generate_ratio_to_plain_generate']:.2f}"],
            ["our rollout (generate + score + forward)", f"{m['rollout']:.2f}",
             f"{r['rollout_ratio_to_plain_generate']:.2f}"]]
    share = [[k, f"{m[k]:.2f}", f"{100 * r['share_of_step'][k]:.1f} %"] for k in ("generate", "score", "forward",
                                                                                   "update")]
    return "\n\n".join([
        f"# Step time: ours vs TRL GRPOTrainer, {layers_label(s)} ({s['new_tokens']} new tokens, "
        f"{s['completions_per_step']} completions a step)",
        common.md_table(["trainer", "median step (s)", "range (s)", "steps"], steps),
        f"Ours / TRL: **{r['ratio_to_trl']:.2f}** (target ≤ 0.50). {s['epochs']} passes × "
        f"{s['completions_per_step'] // s['mini']} mini-batches of {s['mini']} per step "
        f"({s['optimizer_steps_per_step']} optimiser steps), LoRA r16, fp32, rewards: {s['reward_set']}.",
        "## Our rollout vs plain generate on the same batch",
        common.md_table(["", "median (s)", "ratio to plain generate"], roll),
        "Target: rollout ≤ 1.15 × plain generate.",
        "## Share of our step per phase",
        common.md_table(["phase", "median (s)", "share"], share),
        f"Medians of {s['steps']} interleaved rounds after {s['warmup']} warm-up; torch threads {s['threads']}. "
        "Target: score (decode + rewards) ≤ 5 % of a step.",
        common.machine_line(r["machine"], r["load"])])


def suite_rows(r: dict) -> list[dict]:
    """The suite's rows: our step vs TRL's, our rollout vs plain generate, the rewards' share of our step."""
    s = r["settings"]
    where = layers_label(s)
    trl, ours = (r["step_time_s"][k]["median"] for k in (TRL, OURS))
    roll, plain = r["our_phases_s"]["rollout"]["median"], r["plain_generate_s"]["median"]
    share = r["share_of_step"]["score"]
    return [
        common.suite_row(s["name"], f"PPO step vs TRL GRPO step, {where}", ours, "s", trl,
                         r["ratio_to_trl"], "≤ 0.50", r["ratio_to_trl"] <= 0.5),
        common.suite_row(s["name"], f"rollout (sampling + rewards + reference pass) vs plain generate, {where}",
                         roll, "s", plain, r["rollout_ratio_to_plain_generate"], "≤ 1.15",
                         r["rollout_ratio_to_plain_generate"] <= 1.15),
        common.suite_row(s["name"], f"rewards' share of a step (decode + rewards + combination), {where}",
                         round(100 * share, 1), "%", None, None, "≤ 5 %", share <= 0.05),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
