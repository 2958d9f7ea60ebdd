"""The benchmark suite: every speed and resource benchmark from one command, one results table.

    python -m benchmarks                  # the full run (~15 min on 2 cores): results/suite.{json,md}
    python -m benchmarks --quick          # the same benchmarks, shortened (a few minutes)
    python -m benchmarks --smoke          # tiny random models, seconds: that every benchmark runs
    python -m benchmarks --only step_time,memory      # some of them; their rows replace theirs in the table
    python -m benchmarks --collect --only step_time    # the table from results a benchmark already wrote
    make bench                            # = python -m benchmarks; make bench ARGS=--quick

Each benchmark writes its own ``results/<name>.{json,md}`` (every number, the machine, the load) and gives the
suite its headline rows (``suite_rows``): what was measured, against what, the ratio and the target. The suite
keeps one table, ``results/suite.{json,md}``: a run replaces the rows of the benchmarks it ran and keeps the
others', each with the date and the load it was measured under. --quick and --smoke write under
``results/quick`` and ``results/smoke`` so they never overwrite a full run's numbers.

The benchmarks, in the order they run (the full run's default set is the first four):

- ``step_time`` / ``step_time_top10``: our PPO step vs TRL's GRPO step on the same work, LoRA on every layer
  in both / on the top 10 layers in both; our rollout vs plain ``model.generate`` on the same batch; the
  rewards' share of our step (benchmarks/step_time.py);
- ``fault_injection``: PPO and VCB runs SIGKILLed at seeded moments and resumed, equal to the uninterrupted run;
- ``memory``: the peak RSS of a shortened quickstart (the real run's batch shapes);
- ``rewards``: responses/s of each reward backend, batched vs one at a time (not in the default full run);
- ``frozen_trunk``, ``frozen_trunk_vcb``: a PPO / VCB step with the frozen trunk replayed vs recomputed (not
  in the default full run: ~16 and ~5 min).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common

# name: (module, arguments of the full run, of --quick); --smoke is each module's own
BENCHMARKS = {
    "step_time": ("step_time", [], ["--new-tokens", "16", "--steps", "1"]),
    "step_time_top10": ("step_time", ["--lora-top", "10"], ["--lora-top", "10", "--new-tokens", "16", "--steps", "1"]),
    "fault_injection": ("fault_injection", ["--kills", "10"], ["--kills", "2", "--steps", "3"]),
    "memory": ("memory", [], []),
    "rewards": ("rewards", [], ["--n", "16", "--repeats", "1"]),
    "frozen_trunk": ("frozen_trunk", [], ["--new-tokens", "16", "--steps", "1"]),
    "frozen_trunk_vcb": ("frozen_trunk", ["--trainer", "vcb"], ["--trainer", "vcb", "--steps", "2"]),
}
DEFAULT = ("step_time", "step_time_top10", "fault_injection", "memory")
SMOKE_ARGS = {"step_time_top10": ["--lora-top", "2"], "frozen_trunk_vcb": ["--trainer", "vcb"]}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {os.getloadavg()}"


def run_one(name: str, mode: str, out: Path, max_wait: float, threads: int | None = None,
            steps: int | None = None) -> dict:
    """Run one benchmark and read back what it wrote."""
    module, full, quick = BENCHMARKS[name]
    argv = {"full": full, "quick": quick, "smoke": ["--smoke", *SMOKE_ARGS.get(name, [])]}[mode]
    argv = [*argv, "--out", str(out), "--name", name, "--max-wait", str(0 if mode != "full" else max_wait)]
    if threads and name != "fault_injection":  # its tiny runs use one thread already
        argv += ["--threads", str(threads)]
    if steps and module in ("step_time", "frozen_trunk") and mode != "smoke":
        argv += ["--steps", str(steps)]
    mod = importlib.import_module(f"benchmarks.{module}")
    print(f"[suite] {name}: python -m benchmarks.{module} {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    if mode == "smoke":  # in this process: seconds, not a fresh interpreter's imports each
        code = mod.main(argv)
    else:  # a process of its own: nothing one benchmark leaves behind weighs on the next one's timings
        code = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *argv]).returncode
    if code:
        raise SystemExit(f"[suite] {name} exited with {code}")
    result = json.loads((out / f"{name}.json").read_text())
    return {"rows": mod.suite_rows(result), "seconds": round(time.perf_counter() - t0, 1),
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": result.get("load", {}),
            "argv": argv}


def collect_one(name: str, out: Path) -> dict:
    """A benchmark's rows from the results it wrote when run on its own (``python -m benchmarks.<module>``)."""
    path = out / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"[suite] --collect: {path} does not exist; run the benchmark first")
    result = json.loads(path.read_text())
    mod = importlib.import_module(f"benchmarks.{BENCHMARKS[name][0]}")
    return {"rows": mod.suite_rows(result), "seconds": None, "load": result.get("load", {}), "argv": "collected",
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))}


def table(suite: dict) -> str:
    rows = []
    for name, b in suite["benchmarks"].items():
        for r in b["rows"]:
            base = "" if r["baseline"] is None else f"{r['baseline']:g} {r['unit']}"
            ratio = "" if r["ratio"] is None else f"**{r['ratio']:.2f}**"
            met = {True: "met", False: "missed", None: ""}[r["met"]]
            rows.append([r["measure"], f"{r['value']:g} {r['unit']}", base, ratio, r["target"], met,
                         f"`{name}`, {b['measured']}"])
    head = ["measure", "ours", "compared with", "ratio", "target", "", "benchmark, measured"]
    return common.md_table(head, rows)


def markdown(suite: dict) -> str:
    loads = [f"- `{name}`" + (f" ({b['seconds']:.0f} s)" if b.get("seconds") else "")
             + f": 1-minute load {b['load'].get('load1_at_start')} at start, {b['load'].get('load1_at_end')} at end"
             for name, b in suite["benchmarks"].items()]
    runs = [f"- {r['started']} – {r['ended']} ({r['mode']}, {', '.join(r['benchmarks'])})"
            + (f": `uptime` before: {r['uptime_before']}; after: {r['uptime_after']}" if r.get("uptime_before") else "")
            + (f". {r['note']}" if r.get("note") else "") for r in suite["runs"]]
    m = suite["machine"]
    return "\n\n".join([
        "# Benchmark suite", table(suite),
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['memory_gb']} GB; torch {m['torch']}, "
        f"transformers {m['transformers']}, TRL {m.get('trl', '-')}. Every number: `results/<benchmark>.json`; "
        "the tables of each: `results/<benchmark>.md`.",
        "## Load while measuring", "\n".join(loads), "\n".join(runs)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="shortened runs of the same benchmarks (a few minutes)")
    mode.add_argument("--smoke", action="store_true", help="tiny random models, seconds: that every benchmark runs")
    p.add_argument("--only", default=None, help=f"comma-separated, from {', '.join(BENCHMARKS)} (default: "
                                                 f"{', '.join(DEFAULT)}; with --smoke: all)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results, or its quick/ or smoke/)")
    p.add_argument("--note", default="", help="a sentence about the machine's state, kept with the run")
    p.add_argument("--collect", action="store_true", help="run nothing: the rows of --only from their results files")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of every benchmark (default: each one's own, 2); on a machine shared with other "
                        "jobs 1 avoids the collapse of several multi-threaded jobs on the same cores")
    p.add_argument("--steps", type=int, default=None, help="measured rounds of the step benchmarks (default 3)")
    p.add_argument("--max-wait", type=float, default=300,
                   help="seconds each benchmark of a full run waits for a quiet machine (load < 1.5) before it "
                        "runs anyway (0: no wait); the load is recorded either way")
    args = p.parse_args(argv)
    kind = "smoke" if args.smoke else "quick" if args.quick else "full"
    names = args.only.split(",") if args.only else list(BENCHMARKS if args.smoke else DEFAULT)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    out = Path(args.out) if args.out else common.RESULTS / ("" if kind == "full" else kind)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "suite.json"
    suite = json.loads(path.read_text()) if path.exists() else {"benchmarks": {}, "runs": []}
    run = {"mode": "collected" if args.collect else kind, "benchmarks": names, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "uptime_before": None if args.collect else uptime(), "note": args.note}
    print(f"[suite] {kind} run of {', '.join(names)}; {run['uptime_before']}", flush=True)
    for name in names:
        suite["benchmarks"][name] = (collect_one(name, out) if args.collect
                                     else run_one(name, kind, out, args.max_wait, args.threads, args.steps))
        suite["benchmarks"] = {k: suite["benchmarks"][k] for k in BENCHMARKS if k in suite["benchmarks"]}
    run.update(ended=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), uptime_after=None if args.collect else uptime())
    suite["runs"].append(run)
    suite["machine"] = common.machine()
    path.write_text(json.dumps(suite, indent=2, default=str) + "\n")
    (out / "suite.md").write_text(markdown(suite) + "\n")
    print(markdown(suite))
    print("wrote", path, out / "suite.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
