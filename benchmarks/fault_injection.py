"""Crash safety at a larger scale: SIGKILL seeded PPO and VCB runs at many seeded moments, resume each, compare.

    python -m benchmarks.fault_injection                  # 40 kills per trainer, 6-step runs
    python -m benchmarks.fault_injection --kills 100 --steps 10 --seed 3
    python -m benchmarks.fault_injection --smoke          # two kills per trainer, 2-step runs

The same harness as tests/test_fault_injection.py (tests/faults.py): a moment is the n-th start of a step,
metrics line, or file write / rename inside a checkpoint save; the killed run is resumed with
``trainer.resume()`` and must end with the uninterrupted run's metrics (timings aside) and bit-identical
parameters. Writes benchmarks/results/fault_injection.{json,md}. The runs are the tests' tiny models already.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# `python benchmarks/<script>.py` puts benchmarks/ first on the path, not the repository: put the repository
# first, so `benchmarks` is this package (pysbd installs a top-level `benchmarks` package of its own).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=40, help="killed-and-resumed runs per trainer")
    ap.add_argument("--steps", type=int, default=6, help="training steps per run (a checkpoint after each)")
    ap.add_argument("--seed", type=int, default=0)
    common.common_args(ap, "fault_injection", threads=1)
    args = ap.parse_args(argv)
    if args.smoke:
        args.kills, args.steps = 2, 2  # the harness always kills once in a checkpoint write and once after metrics
    args.max_wait = 0  # tiny models, bit-for-bit comparisons: nothing here depends on the load
    load = common.start(args)
    common.tests_on_path()
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
    load["load1_at_end"] = round(common.load1(), 2)
    common.write_results(args.name, {"args": vars(args), "machine": common.machine(), "load": load,
                                     "reports": reports}, "\n".join(lines), args.out)
    return 0 if not bad else 1


def suite_rows(r: dict) -> list[dict]:
    return [common.suite_row(r["args"]["name"], f"{kind.upper()} runs SIGKILLed and resumed equal to the "
                             f"uninterrupted run ({rep['seconds']:.0f} s)", rep["identical"], f"of {rep['runs']}",
                             target="all", met=rep["identical"] == rep["runs"])
            for kind, rep in r["reports"].items()]


if __name__ == "__main__":
    sys.exit(main())
