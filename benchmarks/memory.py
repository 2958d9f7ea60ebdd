"""Peak resident memory (RSS) of a quickstart run.

    .venv/bin/python benchmarks/memory.py             # shortened quickstart (same batch shapes, fewer steps)
    .venv/bin/python benchmarks/memory.py --full      # the whole `alarm quickstart`

Runs ``alarm quickstart --out <tmp> [overrides]`` as a child process and reports its peak RSS two ways:
the kernel's high-water mark (``ru_maxrss`` of the waited-for child, what ``/usr/bin/time -v`` calls
"Maximum resident set size") and the peak of the process tree's summed RSS sampled every 0.2 s with psutil
(catches helper processes, if any). The shortened run keeps every batch shape of the real one — sampling
batches of 16, PPO rollouts of 8 × 48 tokens, mini-batches of 4, evaluation of all 16 test prompts in one
batch — and only runs fewer of them, so its peak is the real run's peak.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

SHORT = ["ppo.steps=2", "sample.prompts=8"]


def tree_rss(proc) -> int:
    import psutil

    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    return total


def main(argv=None) -> int:
    import psutil

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="the whole quickstart, no overrides")
    p.add_argument("--threads", type=int, default=common.THREADS, help="OMP_NUM_THREADS for the run")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--no-wait", action="store_true", help="memory does not depend on load; skip the quiet check")
    p.add_argument("--name", default=None)
    p.add_argument("--label", default="", help="a note stored with the result (e.g. which code was measured)")
    p.add_argument("overrides", nargs="*", help="extra recipe overrides")
    args = p.parse_args(argv)
    load = {"load1_at_start": round(common.load1(), 2)} if args.no_wait else common.wait_until_quiet(args.max_load)
    overrides = ([] if args.full else SHORT) + args.overrides
    out = tempfile.mkdtemp(prefix="alarm-mem-")
    alarm = str(Path(sys.executable).with_name("alarm"))
    cmd = [alarm, "quickstart", "--out", out, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("[bench]", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(child.pid)
    peak, samples = 0, []
    log_lines = []
    import threading

    def drain():
        for line in child.stdout:
            log_lines.append(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while child.poll() is None:
        rss = tree_rss(proc)
        peak = max(peak, rss)
        samples.append((round(time.perf_counter() - t0, 1), round(rss / 2**20)))
        time.sleep(0.2)
    reader.join(timeout=5)
    wall = time.perf_counter() - t0
    maxrss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    load["load1_at_end"] = round(common.load1(), 2)
    if child.returncode != 0:
        print("".join(log_lines[-30:]))
        raise SystemExit(f"quickstart failed with exit code {child.returncode}")
    peak_gb, maxrss_gb = peak / 2**30, maxrss_kb / 2**20
    result = {"label": args.label, "src": os.environ.get("PYTHONPATH", "installed"), "command": " ".join(cmd[1:]), "overrides": overrides, "omp_threads": args.threads, "wall_s": round(wall, 1),
              "peak_rss_gb_kernel": round(maxrss_gb, 3), "peak_rss_gb_sampled_tree": round(peak_gb, 3),
              "target_gb": 3.0, "met": max(maxrss_gb, peak_gb) <= 3.0,
              "rss_mb_timeline": samples[:: max(1, len(samples) // 200)],
              "machine": common.machine(), "load": load}
    name = args.name or ("memory_full" if args.full else "memory")
    md = "\n\n".join([
        "# Peak memory of the quickstart",
        common.md_table(["run", "peak RSS (kernel, GB)", "peak RSS (sampled tree, GB)", "wall (s)", "≤ 3 GB"],
                        [[f"`alarm quickstart {' '.join(overrides)}`", f"{maxrss_gb:.2f}", f"{peak_gb:.2f}",
                          f"{wall:.0f}", "yes" if result["met"] else "no"]]),
        common.machine_line(result["machine"], load)])
    common.write_results(name, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
