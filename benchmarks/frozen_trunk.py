"""A PPO step with and without replaying the frozen trunk (``ppo.reuse_frozen_layers``), interleaved.

    .venv/bin/python benchmarks/frozen_trunk.py           # the real measurement (~8 min on 2 cores)
    .venv/bin/python benchmarks/frozen_trunk.py --tiny    # smoke test

The quickstart's policy setting: SmolLM2-135M-Instruct in fp32 on the CPU, LoRA r16 on the top 10 of its 30
layers (``lora_layers`` 20–29), 8 completions of exactly 64 new tokens from 4 quickstart prompts × 2, the
quickstart's three rewards, 2 PPO epochs of 2 mini-batches of 4. Two trainers, identical but for
``reuse_frozen_layers``, seeded alike and fed the same prompts, step in turn; their losses must agree (the
replay is exact up to float rounding) and the table gives the median seconds per phase of each.
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
    p.add_argument("--name", default="frozen_trunk")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
