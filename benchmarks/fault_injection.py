"""Crash safety at a larger scale: SIGKILL seeded PPO and VCB runs at many seeded moments, resume each, compare.

    .venv/bin/python benchmarks/fault_injection.py                  # 40 kills per trainer, 6-step runs
    .venv/bin/python benchmarks/fault_injection.py --kills 100 --steps 10 --seed 3

The same harness as tests/test_fault_injection.py (tests/faults.py): a moment is the n-th start of a step,
metrics line, or file write / rename inside a checkpoint save; the killed run is resumed with
``trainer.resume()`` and must end with the uninterrupted run's metrics (timings aside) and bit-identical
parameters. Writes benchmarks/results/fault_injection.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import common

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=40, help="killed-and-resumed runs per trainer")
    ap.add_argument("--steps", type=int, default=6, help="training steps per run (a checkpoint after each)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    common.set_threads(1)
    import faults

    reports = {}
    for kind in ("ppo", "vcb"):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            report = faults.campaign(kind, Path(d), n=args.kills, seed=args.seed, steps=args.steps)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        reports[kind] = report
        print(f"{kind}: {report['identical']}/{report['runs']} identical ({report['events']} moments per run, "
              f"{report['seconds']} s)")
    lines = ["# Fault injection: SIGKILL and resume", "",
             f"{args.kills} kills per trainer at seeded moments (seed {args.seed}) of a {args.steps}-step tiny run "
             "with a checkpoint after every step; each killed run resumed once and compared with the "
             "uninterrupted run (metrics without timings, final trainable parameters bit for bit).", "",
             "| trainer | identical | moments per run | killed at (moment: count) | seconds |", "|---|---|---|---|---|"]
    for kind, r in reports.items():
        where = ", ".join(f"{k} {v}" for k, v in sorted(Counter(x["moment"] for x in r["results"]).items()))
        lines.append(f"| {kind} | {r['identical']}/{r['runs']} | {r['events']} | {where} | {r['seconds']} |")
    bad = [(kind, x) for kind, r in reports.items() for x in r["results"]
           if not (x["first"] == "killed" and x["metrics_identical"] and x["params_identical"])]
    lines += ["", "Differences: none." if not bad else "Differences:",
              *[f"- {kind} killed at {x['kill_at']} ({x['moment']}): {x}" for kind, x in bad]]
    common.write_results("fault_injection", {"args": vars(args), "machine": common.machine(), "reports": reports},
                         "\n".join(lines))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
