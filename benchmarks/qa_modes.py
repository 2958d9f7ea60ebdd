"""The four combination modes on QA-Feedback with our trained reward models, same budget and seed.

    nice -n 10 .venv/bin/python benchmarks/qa_modes.py --rm-dir runs/rm --steps 6

Needs the reward models of `alarm rm train` (recipes/rm_holistic.yaml, rm_factuality.yaml, rm_relevance.yaml)
and ../shared/data/qa_feedback/prompts.json. Policy: SmolLM2-135M-Instruct (LoRA PPO). Passages are cut so
every policy prompt fits --max-prompt-tokens (default 384). Normalisation (μ, σ of the holistic reward) and ε
are fitted once on initial-policy samples and shared by every mode. Each mode trains from the same initial
policy with the same seed, then answers the validation questions greedily (questions the reward models did not
train on either). Writes benchmarks/results/qa_modes.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from alarm.combine import CombineConfig, RewardSet
from alarm.data.qa_feedback import PassagePrompt, load_prompts, policy_records, split_questions
from alarm.generation import generate_texts
from alarm.models import load_causal_lm, load_tokenizer, resolve_model_path
from alarm.recipes.ppo import win_rate
from alarm.reward_models.evaluate import load_reward
from alarm.rewards.hf_models import SpanRewardModel
from alarm.trainers.ppo import PPOConfig, PPOTrainer

MODES = ("holistic_only", "aspect_only", "weighted_sum", "hierarchical")
HERE = Path(__file__).resolve().parent


def load_rewards(rm_dir: Path) -> dict:
    """Holistic + factuality (required); relevance when it has been trained (else its column reads n/a)."""
    info = json.loads((rm_dir / "holistic" / "rm_config.json").read_text())
    out = {
        "holistic": load_reward(rm_dir / "holistic", info),  # either architecture, reads question + passages
        "factuality": PassagePrompt(SpanRewardModel.from_pretrained(str(rm_dir / "factuality"), level="sentence",
                                                                    value=0.5, batch_size=16, name="factuality")),
    }
    if (rm_dir / "relevance" / "config.json").exists():
        out["relevance"] = PassagePrompt(SpanRewardModel.from_pretrained(
            str(rm_dir / "relevance"), level="subsentence", value=0.3, batch_size=16, name="relevance"))
    return out


def clean_rate(dense_list) -> float | None:
    """Share of (sub-)sentences the span model judged clean, pooled over all responses."""
    values = [v for d in dense_list if d is not None for _, v in d.points]
    return sum(v > 0 for v in values) / len(values) if values else None


def score(rewards: dict, normalizer, records: list[dict], texts: list[str], tokenizer) -> dict:
    q = [r["question"] for r in records]
    cols = {"passages": [r["passages"] for r in records]}
    h = [normalizer(v) for v in rewards["holistic"](q, texts, **cols)]
    fact = rewards["factuality"](q, texts, **cols)
    rel = rewards["relevance"](q, texts, **cols) if "relevance" in rewards else []
    return {"holistic": h, "factuality_rate": clean_rate(fact), "relevance_rate": clean_rate(rel),
            "length_tokens": [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts],
            "empty": sum(not t.strip() for t in texts)}


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rm-dir", default="runs/rm")
    ap.add_argument("--prompts", default="../shared/data/qa_feedback/prompts.json")
    ap.add_argument("--run-dir", default="runs/qa_modes")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--aspects", default="factuality", help="aspects trained on (the paper's selection kept factuality)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rollout-batch-size", type=int, default=8)
    ap.add_argument("--mini-batch-size", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-prompt-tokens", type=int, default=384)
    ap.add_argument("--fit-prompts", type=int, default=16)
    ap.add_argument("--eval-prompts", type=int, default=24)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--holistic-weight", type=float, default=5.0)
    ap.add_argument("--epsilon", type=float, default=0.6)
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)

    path = resolve_model_path("smollm2-135m-instruct")
    tokenizer = load_tokenizer(path)
    prompts = [r for r in load_prompts(args.prompts) if r.passages]
    train_q, val_q = split_questions([r.question for r in prompts], 0.2, args.seed)
    train = policy_records([r for r in prompts if r.question in train_q], tokenizer, args.max_prompt_tokens)
    val = policy_records([r for r in prompts if r.question in val_q], tokenizer, args.max_prompt_tokens)
    val = val[: args.eval_prompts]
    rewards = load_rewards(Path(args.rm_dir))
    aspects = [a for a in args.aspects.split(",") if a]
    timings: dict[str, float] = {}

    # initial policy: samples to fit normalisation / ε, and greedy validation answers
    t0 = time.perf_counter()
    model = load_causal_lm(path)
    fit = train[: args.fit_prompts]
    samples = generate_texts(model, tokenizer, [r["prompt"] for r in fit], max_new_tokens=args.max_new_tokens,
                             do_sample=True, num_samples=2, batch_size=8, progress="sampling the initial policy")
    flat = [(r, t) for r, ts in zip(fit, samples) for t in ts]
    base = RewardSet(CombineConfig(mode="hierarchical", holistic_weight=args.holistic_weight, epsilon=args.epsilon),
                     holistic=rewards["holistic"], aspects={a: rewards[a] for a in aspects})
    base.fit([r["question"] for r, _ in flat], [t for _, t in flat], passages=[r["passages"] for r, _ in flat])
    state = base.state()
    normalizer = base.normalizers["holistic"]
    outputs = {"initial": [t[0] for t in generate_texts(model, tokenizer, [r["prompt"] for r in val],
                                                         max_new_tokens=args.max_new_tokens, batch_size=8,
                                                         progress="evaluating initial")]}
    timings["initial (fit + eval)"] = time.perf_counter() - t0
    del model
    gc.collect()

    histories = {}
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        model = load_causal_lm(path)
        rs = RewardSet(CombineConfig(mode=mode, holistic_weight=args.holistic_weight, epsilon=args.epsilon),
                       holistic=rewards["holistic"], aspects={a: rewards[a] for a in aspects})
        rs.load_state(state)
        cfg = PPOConfig(steps=args.steps, rollout_batch_size=args.rollout_batch_size,
                        mini_batch_size=args.mini_batch_size, grad_accum_steps=1, ppo_epochs=args.ppo_epochs,
                        max_new_tokens=args.max_new_tokens, seed=args.seed)
        run_dir = Path(args.run_dir) / mode
        if (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
        trainer = PPOTrainer(cfg, model, tokenizer, rs, train, run_dir)
        histories[mode] = trainer.train()
        policy = trainer.unwrapped.model
        outputs[mode] = [t[0] for t in generate_texts(policy, tokenizer, [r["prompt"] for r in val],
                                                       max_new_tokens=args.max_new_tokens, batch_size=8,
                                                       progress=f"evaluating {mode}")]
        timings[mode] = time.perf_counter() - t0
        print(f"{mode}: {timings[mode]:.0f} s", flush=True)
        del trainer, model, policy
        gc.collect()

    scores = {name: score(rewards, normalizer, val, texts, tokenizer) for name, texts in outputs.items()}
    systems = list(outputs)
    result = {
        "settings": {**vars(args), "policy": "smollm2-135m-instruct (LoRA)", "train_questions": len(train),
                     "epsilon_resolved": state["epsilon"], "holistic_normalizer": state["normalizers"]["holistic"]},
        "means": {s: {"holistic": mean(scores[s]["holistic"]), "factuality_rate": scores[s]["factuality_rate"],
                      "relevance_rate": scores[s]["relevance_rate"], "length_tokens": mean(scores[s]["length_tokens"]),
                      "empty": scores[s]["empty"]} for s in systems},
        "win_rates_vs_initial": {s: win_rate(scores[s]["holistic"], scores["initial"]["holistic"])
                                 for s in systems if s != "initial"},
        "win_rates_hierarchical_vs": {s: win_rate(scores["hierarchical"]["holistic"], scores[s]["holistic"])
                                      for s in systems if s not in ("hierarchical",) and "hierarchical" in scores},
        "training": {m: {"final_return_mean": h[-1]["return/mean"] if h else None,
                         "gate_open_rate": mean([x.get("gate_open_rate") for x in h])} for m, h in histories.items()},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.perf_counter() - t_start, 1),
        "generations": [{"question": r["question"], **{s: outputs[s][i] for s in systems}} for i, r in enumerate(val)],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qa_modes.json").write_text(json.dumps(result, indent=2))
    (out / "qa_modes.md").write_text(markdown(result))
    print(markdown(result))


def _f(x, pct=False):
    if x is None:
        return "n/a"
    return f"{x:.0%}" if pct else f"{x:.3f}"


def _wr(w):
    return "—" if w is None or w["win_rate"] is None else f"{w['win_rate']:.0%} ({w['wins']}–{w['losses']}, {w['ties']} ties)"


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# QA-Feedback: the four combination modes (trained reward models)", "",
        f"SmolLM2-135M-Instruct + LoRA PPO, {s['steps']} steps × {s['rollout_batch_size']} prompts "
        f"(mini-batch {s['mini_batch_size']}, {s['ppo_epochs']} PPO epochs), {s['max_new_tokens']} new tokens, prompts "
        f"≤ {s['max_prompt_tokens']} tokens (passages cut), seed {s['seed']}; w_h {s['holistic_weight']}, "
        f"ε {s['epsilon']}; aspects trained on: {s['aspects']}. Rewards: our MiniLM reward models "
        f"(runs/rm). Greedy answers to {len(result['generations'])} validation questions. "
        f"Total {result['total_s'] / 60:.0f} min on 2 shared CPU cores.", "",
        "| system | holistic (z) | factuality rate | relevance rate | length (tokens) | holistic win rate vs initial "
        "| hierarchical wins vs this |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in result["means"].items():
        lines.append(f"| {name} | {_f(m['holistic'])} | {_f(m['factuality_rate'], True)} | "
                     f"{_f(m['relevance_rate'], True)} | {_f(m['length_tokens'])[:-2]} | "
                     f"{_wr(result['win_rates_vs_initial'].get(name))} | "
                     f"{_wr(result['win_rates_hierarchical_vs'].get(name))} |")
    lines += ["", "Factuality / relevance rate: share of sentences / sub-sentences our span models judge clean. Win "
              "rates by the holistic reward: wins / (wins + losses), ties excluded.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
