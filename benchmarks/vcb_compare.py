"""VCB vs DPO vs IPO on the same samples and the same budget (SmolLM2-135M-Instruct, quickstart data, CPU).

    nice -n 10 .venv/bin/python benchmarks/vcb_compare.py [--label=NAME] [key=value overrides of the recipe...]

``--label`` keeps the training runs and results of another budget apart (vcb_compare-NAME.json/.md); sampling
settings left unchanged reuse the stored samples.

Samples once (``alarm vcb sample``), trains each loss from the same initial policy with the same pairs, steps
and learning rate, and reports for the initial policy and each trained one: the mean reward of greedy outputs
on held-out prompts (ALaRM's hierarchical combination: reference similarity gating grounding + relevance), the
pairwise ranking accuracy on held-out candidate pairs, and the correlation between β·Δρ and the normalised
reward gap on those pairs. Writes benchmarks/results/vcb_compare.json and .md. The VCB loss is a
reconstruction from the paper's description (alarm/trainers/vcb.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from alarm.recipes.vcb import load_policy, load_vcb_recipe, run_sample, run_train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "src" / "alarm" / "recipes" / "vcb_quickstart.yaml"

# The budget: 12 train prompts × 4 samples, 32 new tokens, best-vs-rest pairs, one epoch, LoRA on the top
# 8 layers — sized for two CPU cores shared with other jobs. Identical for every loss. Raise it with
# overrides on a free machine, e.g. data.max_train_prompts=48 sample.eval_prompts=16 vcb.pairs=all vcb.epochs=2
BUDGET = [
    "output_dir=runs/vcb_compare", "data.max_train_prompts=12", "sample.n=4", "sample.eval_prompts=6",
    "sample.max_new_tokens=32", "sample.prompts_per_shard=6", "vcb.pairs=best_vs_rest", "vcb.epochs=1",
    "vcb.batch_size=6", "vcb.micro_batch_size=3", "vcb.learning_rate=3e-4", "vcb.eval_max_new_tokens=32",
    "vcb.eval_batch_size=12", "vcb.lora_layers=[22,23,24,25,26,27,28,29]",
]
LOSSES = ("vcb", "dpo", "ipo")
KEYS = {"greedy_reward": "eval/greedy_reward_mean", "ranking_accuracy": "eval/ranking_accuracy",
        "corr": "eval/corr", "calibration_mse": "eval/calibration_mse",
        "gate_open_rate": "eval/greedy/gate_open_rate", "holistic_raw": "eval/greedy/rewards/holistic/mean"}


def _row(metrics: dict) -> dict:
    return {k: metrics.get(v) for k, v in KEYS.items()}


def _fmt(v) -> str:
    return "—" if v is None else f"{v:+.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str]) -> int:
    label = next((a.split("=", 1)[1] for a in argv if a.startswith("--label=")), None)
    argv = [a for a in argv if not a.startswith("--label=")]
    torch.set_num_threads(int(os.environ.get("VCB_THREADS", "1")))  # 1: less spin-waiting on busy cores
    overrides = BUDGET + argv
    t0 = time.time()
    base = load_vcb_recipe(RECIPE, overrides)
    model, tok = load_policy(base.model)
    run_sample(base, model=model, tokenizer=tok)
    t_sample = time.time() - t0

    results: dict = {"budget": overrides, "time_sample_s": round(t_sample, 1), "methods": {}}
    for i, loss in enumerate(LOSSES):
        extra = [f"vcb.loss={loss}", f"vcb.eval_at_start={i == 0}"]
        if label:
            extra.append(f"train_dir={base.run_dir() / f'{label}-{loss}'}")
        recipe = load_vcb_recipe(RECIPE, overrides + extra)
        out = recipe.training_dir()
        resume = (out / "checkpoints" / "latest").exists()
        t1 = time.time()
        model, tok = load_policy(recipe.model)  # fresh initial policy for every loss
        if resume and (out / "summary.json").exists():
            final = json.loads((out / "summary.json").read_text())
        else:
            final = run_train(recipe, resume=resume, model=model, tokenizer=tok)
        history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        if i == 0:
            results["initial"] = _row(history[0])
        steps = [m for m in history if "loss" in m]
        results["methods"][loss] = {**_row(final), "steps": len(steps),
                                    "pair_updates": len(steps) * recipe.vcb.batch_size,
                                    "train_loss_first": steps[0]["loss"] if steps else None,
                                    "train_loss_last": steps[-1]["loss"] if steps else None,
                                    "time_s": round(time.time() - t1, 1)}
        print(loss, results["methods"][loss], flush=True)

    samples = json.loads((base.samples_dir() / "sample_stats.json").read_text())
    results["sample_stats"] = samples
    results["time_total_s"] = round(time.time() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"vcb_compare-{label}" if label else "vcb_compare"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2))

    lines = ["# VCB vs DPO vs IPO (quickstart, SmolLM2-135M-Instruct, CPU)", "",
             f"Same samples ({base.data.max_train_prompts} train prompts × {base.sample.n} candidates, sampled at T=1 from the initial policy), same pairs "
             f"({base.vcb.pairs}), steps, learning rate and LoRA layers for every loss. Held-out: {base.sample.eval_prompts} "
             f"test prompts "
             f"(greedy outputs) and all untied pairs of their {base.sample.n} candidates. Reward: ALaRM hierarchical "
             "(holistic = reference similarity, z-scored; aspects grounding + relevance, shaped, gated at ε). "
             "VCB is a reconstruction of the paper's loss.", "",
             "| policy | held-out greedy reward | ranking acc. | corr(β·Δρ, gap) | calib. MSE | gate open | steps |",
             "|---|---|---|---|---|---|---|"]
    init = results["initial"]
    lines.append(f"| initial | {_fmt(init['greedy_reward'])} | {_fmt(init['ranking_accuracy'])} | "
                 f"{_fmt(init['corr'])} | {_fmt(init['calibration_mse'])} | {_fmt(init['gate_open_rate'])} | 0 |")
    for loss, r in results["methods"].items():
        lines.append(f"| {loss} | {_fmt(r['greedy_reward'])} | {_fmt(r['ranking_accuracy'])} | {_fmt(r['corr'])} | "
                     f"{_fmt(r['calibration_mse'])} | {_fmt(r['gate_open_rate'])} | {r['steps']} |")
    lines += ["", f"Budget overrides: `{' '.join(overrides)}`; total {results['time_total_s']:.0f} s."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
