"""Our rollout vs plain ``model.generate`` on the same batch, and where a PPO step's time goes.

    .venv/bin/python benchmarks/rollout.py            # the real measurement (~5 min on 2 cores)
    .venv/bin/python benchmarks/rollout.py --tiny     # smoke test

Same workload as step_time.py (SmolLM2-135M-Instruct, fp32, CPU, 8 completions of exactly 64 new tokens,
LoRA r16), our hierarchical configuration (the quickstart's three rewards). Alternating, per step:
1. plain generate: a separate copy of the base model (no LoRA, no trainer), ``model.generate`` with the same
   prompt tensors, sampling, the same length;
2. one full PPO step of our trainer (``PPOTrainer.step``), whose metrics split it into generate (sampling
   with the LoRA policy), score (decode + all rewards + combination), forward (rollout log-probs, values and
   the reference's log-probs) and update (the PPO epochs).
Our rollout = generate + score + forward (everything before the update). Tokens/s counts generated tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import common
import step_time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--mini", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=common.THREADS)
    p.add_argument("--simple", action="store_true", help="length reward instead of the hierarchical set")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for a quiet machine, then run anyway")
    p.add_argument("--name", default="rollout")
    args = p.parse_args(argv)
    if args.tiny:
        args.new_tokens, args.warmup, args.steps = 8, 1, 2
    warnings.filterwarnings("ignore")
    threads = common.set_threads(args.threads)
    load = {"load1_at_start": round(common.load1(), 2)} if args.tiny else common.wait_until_quiet(args.max_load, args.max_wait)

    import torch

    plain, tok = common.load_policy()
    plain.eval()
    records = common.quickstart_records(tok)
    rewards = step_time.length_reward_set() if args.simple else step_time.hierarchical_reward_set(records)
    trainer = step_time.our_trainer(args, rewards, records, tempfile.mkdtemp(prefix="alarm-bench-"))
    n_tokens = 2 * args.prompts * args.new_tokens

    rows = []
    for i in range(args.warmup + args.steps):
        batch = trainer.encode_prompts(trainer.prompt_batch(trainer.step_idx))
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = plain.generate(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0, min_new_tokens=args.new_tokens,
                                 max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
        t_plain = time.perf_counter() - t0
        assert out.shape[1] - batch["prompt_ids"].shape[1] == args.new_tokens
        m = trainer.step()
        assert m["length/tokens_max"] == args.new_tokens, m["length/tokens_max"]
        row = {"plain_generate": t_plain, **{k[5:]: m[k] for k in m if k.startswith("time/")}}
        row["rollout"] = row["generate"] + row["score"] + row["forward"]
        rows.append(row)
        print(f"[bench] step {i}: " + " ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    load["load1_at_end"] = round(common.load1(), 2)

    kept = rows[args.warmup :]
    med = {k: common.summary([r[k] for r in kept]) for k in kept[0]}
    m = {k: v["median"] for k, v in med.items()}
    result = {
        "settings": {**vars(args), "torch_threads": threads, "completions": 2 * args.prompts,
                     "reward_set": "length" if args.simple else "hierarchical (quickstart)"},
        "machine": common.machine(), "load": load, "time_s": med,
        "tokens_per_s": {"plain generate": round(n_tokens / m["plain_generate"], 1),
                         "our generate (LoRA policy)": round(n_tokens / m["generate"], 1),
                         "our rollout (generate + score + forward)": round(n_tokens / m["rollout"], 1)},
        "ratio_to_plain_generate": {"our generate": round(m["generate"] / m["plain_generate"], 3),
                                    "our rollout": round(m["rollout"] / m["plain_generate"], 3)},
        "share_of_step": {k: round(m[k] / m["step"], 3) for k in ("generate", "score", "forward", "update")},
    }
    rows_md = [["plain `model.generate` (base model)", f"{m['plain_generate']:.2f}",
                result["tokens_per_s"]["plain generate"], "1.00"],
               ["our generate (LoRA policy)", f"{m['generate']:.2f}",
                result["tokens_per_s"]["our generate (LoRA policy)"], f"{result['ratio_to_plain_generate']['our generate']:.2f}"],
               ["our rollout (generate + score + forward)", f"{m['rollout']:.2f}",
                result["tokens_per_s"]["our rollout (generate + score + forward)"],
                f"{result['ratio_to_plain_generate']['our rollout']:.2f}"]]
    share = [[k, f"{m[k]:.2f}", f"{100 * result['share_of_step'][k]:.1f} %"]
             for k in ("generate", "score", "forward", "update")] + [["step", f"{m['step']:.2f}", "100 %"]]
    md = "\n\n".join([
        f"# Rollout vs plain generate ({2 * args.prompts} × {args.new_tokens} tokens, {result['settings']['reward_set']})",
        common.md_table(["", "median time (s)", "generated tokens/s", "ratio to plain generate"], rows_md),
        "## Share of a PPO step per phase",
        common.md_table(["phase", "median (s)", "share"], share),
        f"Medians of {len(kept)} steps after {args.warmup} warm-up; torch threads {threads}. Target: rollout ≤ 1.15 × plain generate.",
        common.machine_line(result["machine"], load)])
    common.write_results(args.name, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
