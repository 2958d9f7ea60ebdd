"""A PPO step with and without replaying the frozen trunk (``ppo.reuse_frozen_layers``), interleaved.

    .venv/bin/python benchmarks/frozen_trunk.py           # the real measurement (~8 min on 2 cores)
    .venv/bin/python benchmarks/frozen_trunk.py --tiny    # smoke test

The quickstart's policy setting: SmolLM2-135M-Instruct in fp32 on the CPU, LoRA r16 on the top 10 of its 30
layers (``lora_layers`` 20–29), 8 completions of exactly 64 new tokens from 4 quickstart prompts × 2, the
quickstart's three rewards, 2 PPO epochs of 2 mini-batches of 4. Two trainers, identical but for
``reuse_frozen_layers``, seeded alike and fed the same prompts, step in turn; their losses must agree (the
replay is exact up to float rounding) and the table gives the median seconds per phase of each.

``--trainer vcb``: the same for VCB (offline pairs): 12 quickstart prompts × 4 candidates (the reference
answer, its passages' sentences; rewards seeded at random), 8 pairs a step in micro-batches of 4. Each
candidate's frozen-layer states are kept from the one reference pass (the first step, the warm-up) and
replayed in every training pass.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import common
import step_time

PHASES = ("generate", "score", "forward", "update", "step")
LOSSES = ("ppo/pg_loss", "ppo/vf_loss", "kl")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--mini", type=int, default=4)
    p.add_argument("--lora-layers", type=int, nargs="+", default=list(range(20, 30)))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=common.THREADS)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for a quiet machine, then run anyway")
    p.add_argument("--trainer", choices=("ppo", "vcb"), default="ppo")
    p.add_argument("--name", default=None, help="default frozen_trunk (ppo) or frozen_trunk_vcb")
    args = p.parse_args(argv)
    args.name = args.name or ("frozen_trunk" if args.trainer == "ppo" else "frozen_trunk_vcb")
    if args.trainer == "vcb":
        return vcb_main(args)
    if args.tiny:
        args.new_tokens, args.warmup, args.steps = 8, 1, 1
    warnings.filterwarnings("ignore")
    threads = common.set_threads(args.threads)
    load = {"load1_at_start": round(common.load1(), 2)} if args.tiny else common.wait_until_quiet(args.max_load, args.max_wait)

    _, tok = common.load_policy()
    records = common.quickstart_records(tok)
    trainers = {}
    for reuse in (True, False):
        args.config_overrides = {"lora_layers": args.lora_layers, "reuse_frozen_layers": reuse}
        trainers[reuse] = step_time.our_trainer(args, step_time.hierarchical_reward_set(records), records,
                                                tempfile.mkdtemp(prefix="alarm-bench-"))
    depth = trainers[True].unwrapped.trunk_depth
    assert depth == min(args.lora_layers) and trainers[False].unwrapped.trunk_depth == 0, depth

    import torch

    # One global torch generator: each trainer keeps its own state, so both sample the same tokens.
    torch.manual_seed(0)
    rng = {reuse: torch.get_rng_state() for reuse in trainers}
    rows = {True: [], False: []}
    for i in range(args.warmup + args.steps):
        for reuse, tr in trainers.items():
            torch.set_rng_state(rng[reuse])
            m = tr.step()
            rng[reuse] = torch.get_rng_state()
            rows[reuse].append(m)
            print(f"[bench] step {i} reuse={reuse}: " + " ".join(f"{k} {m['time/' + k]:.2f}" for k in PHASES),
                  flush=True)
    load["load1_at_end"] = round(common.load1(), 2)

    med = {reuse: {k: common.summary([r["time/" + k] for r in rs[args.warmup :]]) for k in PHASES}
           for reuse, rs in rows.items()}
    # Same seeds and prompts: the two runs sample the same tokens, so their losses differ only by rounding.
    gaps = {k: max(abs(a[k] - b[k]) for a, b in zip(rows[True], rows[False])) for k in LOSSES}
    on, off = ({k: v["median"] for k, v in med[r].items()} for r in (True, False))
    result = {
        "settings": {**{k: v for k, v in vars(args).items() if k != "config_overrides"}, "torch_threads": threads,
                     "completions": 2 * args.prompts, "frozen_layers": depth},
        "machine": common.machine(), "load": load,
        "time_s": {"reuse": med[True], "recompute": med[False]},
        "ratio_reuse_to_recompute": {k: round(on[k] / off[k], 3) for k in PHASES},
        "max_abs_loss_gap": gaps,
    }
    table = [[k, f"{off[k]:.2f}", f"{on[k]:.2f}", f"{on[k] / off[k]:.2f}"] for k in PHASES]
    md = "\n\n".join([
        f"# PPO step: the frozen trunk replayed vs recomputed ({2 * args.prompts} × {args.new_tokens} tokens, "
        f"LoRA on layers {min(args.lora_layers)}–{max(args.lora_layers)}, {depth} frozen layers)",
        common.md_table(["phase", "recompute (s)", "replay (s)", "ratio"], table),
        f"Medians of {args.steps} steps of each after {args.warmup} warm-up, interleaved; torch threads {threads}. "
        "Largest gap between the two runs' per-step losses: "
        + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()) + ".",
        common.machine_line(result["machine"], load)])
    common.write_results(args.name, result, md)
    return 0


def vcb_main(args) -> int:
    import numpy as np

    from alarm.trainers.vcb import VCBConfig, VCBTrainer

    if args.tiny:
        args.warmup, args.steps = 1, 1
    threads = common.set_threads(args.threads)
    load = {"load1_at_start": round(common.load1(), 2)} if args.tiny else common.wait_until_quiet(args.max_load, args.max_wait)
    _, tok = common.load_policy()
    rng = np.random.default_rng(0)
    rows = []
    for k, r in enumerate(common.quickstart_records(tok)[:12]):
        candidates = [r["reference"], *r["passages"], " ".join(r["passages"])][:4]
        rows += [{"prompt_id": f"q{k}", "prompt": r["prompt"], "candidate": c, "reward": float(rng.normal())}
                 for c in candidates]
    trainers, times, losses = {}, {True: [], False: []}, {True: [], False: []}
    for reuse in (True, False):
        model, _ = common.load_policy()
        cfg = VCBConfig(batch_size=8, micro_batch_size=4, max_steps=args.warmup + args.steps, learning_rate=1e-3,
                        eval_greedy=False, eval_at_start=False, lora_layers=args.lora_layers,
                        reuse_frozen_layers=reuse, seed=0)
        trainers[reuse] = VCBTrainer(cfg, model, tok, rows, tempfile.mkdtemp(prefix="alarm-bench-"))
    depth = trainers[True].unwrapped.trunk_depth
    assert depth == min(args.lora_layers) and trainers[False].unwrapped.trunk_depth == 0, depth
    for i in range(args.warmup + args.steps):
        for reuse, tr in trainers.items():
            m = tr.step()
            times[reuse].append(m["time/step"])
            losses[reuse].append(m["loss"])
            print(f"[bench] step {i} reuse={reuse}: {m['time/step']:.2f} s, loss {m['loss']:.6f}", flush=True)
    load["load1_at_end"] = round(common.load1(), 2)
    med = {r: common.summary(t[args.warmup :]) for r, t in times.items()}
    first = {r: round(t[0], 2) for r, t in times.items()}
    gap = max(abs(a - b) for a, b in zip(losses[True], losses[False]))
    on, off = med[True]["median"], med[False]["median"]
    result = {"settings": {**vars(args), "torch_threads": threads, "candidates": len(rows), "frozen_layers": depth,
                           "kept_candidates": len(trainers[True].trunk)},
              "machine": common.machine(), "load": load,
              "time_s": {"reuse": med[True], "recompute": med[False]}, "first_step_s": first,
              "ratio_reuse_to_recompute": round(on / off, 3), "max_abs_loss_gap": gap}
    md = "\n\n".join([
        f"# VCB step: the frozen trunk replayed vs recomputed ({len(rows)} candidates, 8 pairs a step, "
        f"LoRA on layers {min(args.lora_layers)}–{max(args.lora_layers)}, {depth} frozen layers)",
        common.md_table(["", "recompute (s)", "replay (s)", "ratio"],
                        [["first step (with the reference pass)", f"{first[False]:.2f}", f"{first[True]:.2f}",
                          f"{first[True] / first[False]:.2f}"],
                         ["step (median)", f"{off:.2f}", f"{on:.2f}", f"{on / off:.2f}"]]),
        f"Medians of {args.steps} steps of each after {args.warmup} warm-up, interleaved; torch threads {threads}. "
        f"Largest gap between the two runs' per-step losses: {gap:.1e}.",
        common.machine_line(result["machine"], load)])
    common.write_results(args.name, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
