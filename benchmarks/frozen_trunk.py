"""A PPO step with and without replaying the frozen trunk (``ppo.reuse_frozen_layers``), interleaved.

    python -m benchmarks.frozen_trunk                    # the real measurement (~16 min on 2 cores)
    python -m benchmarks.frozen_trunk --trainer vcb      # the same for VCB (~5 min)
    python -m benchmarks.frozen_trunk --smoke            # tiny random models (LoRA on layers 2-3 of 4), seconds

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
import sys
import tempfile
import warnings
from pathlib import Path

# `python benchmarks/<script>.py` puts benchmarks/ first on the path, not the repository: put the repository
# first, so `benchmarks` is this package (pysbd installs a top-level `benchmarks` package of its own).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, step_time  # noqa: E402

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
    p.add_argument("--trainer", choices=("ppo", "vcb"), default="ppo")
    p.add_argument("--length-reward", action="store_true", help="a length reward instead of the quickstart's three")
    common.common_args(p, None)  # --name: default frozen_trunk (ppo) or frozen_trunk_vcb
    args = p.parse_args(argv)
    args.name = args.name or ("frozen_trunk" if args.trainer == "ppo" else "frozen_trunk_vcb")
    if args.smoke:
        args.prompts, args.mini, args.epochs, args.new_tokens, args.warmup, args.steps = 2, 2, 1, 4, 1, 1
        args.lora_layers, args.length_reward = [2, 3], True
    warnings.filterwarnings("ignore")
    load = common.start(args)
    threads = args.threads
    tok = common.load_tokenizer()
    make, describe = (ppo_trainers, ppo_report) if args.trainer == "ppo" else (vcb_trainers, vcb_report)
    trainers = make(args, tok)
    depth = trainers[True].unwrapped.trunk_depth
    assert depth == min(args.lora_layers) and trainers[False].unwrapped.trunk_depth == 0, depth
    rows = interleaved_steps(trainers, args.warmup + args.steps)
    load["load1_at_end"] = round(common.load1(), 2)
    result, title, table, gaps = describe(args, trainers, rows)
    result = {"settings": {**vars(args), "torch_threads": threads, "frozen_layers": depth, **result.pop("settings")},
              "machine": common.machine(), "load": load, **result}
    md = "\n\n".join([
        f"# {title}, LoRA on layers {min(args.lora_layers)}–{max(args.lora_layers)}, {depth} frozen layers)",
        common.md_table(["", "recompute (s)", "replay (s)", "ratio"], table),
        f"Medians of {args.steps} steps of each after {args.warmup} warm-up, interleaved; torch threads {threads}. "
        "Largest gap between the two runs' per-step losses: " + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()) + ".",
        common.machine_line(result["machine"], load)])
    common.write_results(args.name, result, md, args.out)
    return 0


def suite_rows(r: dict) -> list[dict]:
    s, ratio = r["settings"], r["ratio_reuse_to_recompute"]
    where = f"LoRA on layers {min(s['lora_layers'])}–{max(s['lora_layers'])}"
    if s["trainer"] == "vcb":
        return [common.suite_row(s["name"], f"VCB step, frozen trunk replayed vs recomputed, {where}",
                                 r["time_s"]["reuse"]["median"], "s", r["time_s"]["recompute"]["median"], ratio)]
    return [common.suite_row(s["name"], f"PPO step, frozen trunk replayed vs recomputed, {where}",
                             r["time_s"]["reuse"]["step"]["median"], "s", r["time_s"]["recompute"]["step"]["median"],
                             ratio["step"])]


def interleaved_steps(trainers: dict, n: int) -> dict[bool, list[dict]]:
    """``n`` steps of each trainer in turn, each with its own torch random state (one global generator), so
    identically seeded trainers sample the same tokens."""
    import torch

    torch.manual_seed(0)
    rng = {reuse: torch.get_rng_state() for reuse in trainers}
    rows = {reuse: [] for reuse in trainers}
    for i in range(n):
        for reuse, tr in trainers.items():
            torch.set_rng_state(rng[reuse])
            m = tr.step()
            rng[reuse] = torch.get_rng_state()
            rows[reuse].append(m)
            print(f"[bench] step {i} reuse={reuse}: " + " ".join(f"{k} {v:.4g}" for k, v in m.items()
                                                                if k.startswith(("time/", "loss"))), flush=True)
    return rows


def _medians(args, rows: dict[bool, list[dict]], keys) -> dict[bool, dict]:
    """Medians (and spread) after the warm-up, keyed by phase ("time/update" → "update")."""
    return {reuse: {k.removeprefix("time/"): common.summary([r[k] for r in rs[args.warmup :]]) for k in keys}
            for reuse, rs in rows.items()}


def _loss_gaps(rows: dict[bool, list[dict]], keys) -> dict[str, float]:
    # Same seeds and inputs: the two runs differ only by float rounding.
    return {k: max(abs(a[k] - b[k]) for a, b in zip(rows[True], rows[False])) for k in keys}


def ppo_trainers(args, tok) -> dict:
    records = common.quickstart_records(tok)
    trainers = {}
    for reuse in (True, False):
        rewards = step_time.length_reward_set() if args.length_reward else step_time.hierarchical_reward_set(records)
        trainers[reuse] = step_time.our_trainer(args, rewards, records, tempfile.mkdtemp(prefix="alarm-bench-"),
                                                args.lora_layers, reuse_frozen_layers=reuse)
    return trainers


def ppo_report(args, trainers, rows):
    med = _medians(args, rows, [f"time/{k}" for k in PHASES])
    on, off = ({k: med[r][k]["median"] for k in PHASES} for r in (True, False))
    result = {"settings": {"completions": 2 * args.prompts},
              "time_s": {"reuse": med[True], "recompute": med[False]},
              "ratio_reuse_to_recompute": {k: round(on[k] / off[k], 3) for k in PHASES},
              "max_abs_loss_gap": _loss_gaps(rows, LOSSES)}
    table = [[k, f"{off[k]:.2f}", f"{on[k]:.2f}", f"{on[k] / off[k]:.2f}"] for k in PHASES]
    title = f"PPO step: the frozen trunk replayed vs recomputed ({2 * args.prompts} × {args.new_tokens} tokens"
    return result, title, table, result["max_abs_loss_gap"]


def vcb_trainers(args, tok) -> dict:
    import numpy as np

    from alarm.trainers.vcb import VCBConfig, VCBTrainer

    rng = np.random.default_rng(0)
    rows = []
    for k, r in enumerate(common.quickstart_records(tok)[: 2 if args.smoke else 12]):
        candidates = [r["reference"], *r["passages"], " ".join(r["passages"])][:4]
        rows += [{"prompt_id": f"q{k}", "prompt": r["prompt"], "candidate": c, "reward": float(rng.normal())}
                 for c in candidates]
    trainers = {}
    for reuse in (True, False):
        model, _ = common.policy_and_tokenizer()
        cfg = VCBConfig(batch_size=4 if args.smoke else 8, micro_batch_size=2 if args.smoke else 4, max_steps=args.warmup + args.steps, learning_rate=1e-3,
                        eval_greedy=False, eval_at_start=False, lora_layers=args.lora_layers,
                        reuse_frozen_layers=reuse, seed=0)
        trainers[reuse] = VCBTrainer(cfg, model, tok, rows, tempfile.mkdtemp(prefix="alarm-bench-"))
    return trainers


def vcb_report(args, trainers, rows):
    med = _medians(args, rows, ["time/step"])
    on, off = (med[r]["step"]["median"] for r in (True, False))
    first = {r: round(rows[r][0]["time/step"], 2) for r in rows}
    gaps = _loss_gaps(rows, ["loss"])
    result = {"settings": {"candidates": len(trainers[True].rows), "kept_candidates": len(trainers[True].trunk)},
              "time_s": {"reuse": med[True]["step"], "recompute": med[False]["step"]},
              "first_step_s": first, "ratio_reuse_to_recompute": round(on / off, 3), "max_abs_loss_gap": gaps["loss"]}
    table = [["first step (with the reference pass)", f"{first[False]:.2f}", f"{first[True]:.2f}",
              f"{first[True] / first[False]:.2f}"],
             ["step (median)", f"{off:.2f}", f"{on:.2f}", f"{on / off:.2f}"]]
    title = f"VCB step: the frozen trunk replayed vs recomputed ({len(trainers[True].rows)} candidates, 8 pairs a step"
    return result, title, table, gaps


if __name__ == "__main__":
    raise SystemExit(main())
