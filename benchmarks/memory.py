"""Peak resident memory (RSS) of a quickstart run.

    python -m benchmarks.memory             # shortened quickstart (same batch shapes, fewer steps)
    python -m benchmarks.memory --full      # the whole `alarm quickstart`
    python -m benchmarks.memory --smoke     # the shortened run's settings validated, a child that only imports

Runs ``alarm quickstart --out <tmp> [overrides]`` as a child process and reports its peak RSS two ways:
the kernel's high-water mark (``ru_maxrss`` of the waited-for child, what ``/usr/bin/time -v`` calls
"Maximum resident set size") and the peak of the process tree's summed RSS sampled every 0.2 s with psutil
(catches helper processes, if any). The shortened run keeps every batch shape of the real one — sampling
batches of 16, PPO rollouts of 8 × 48 tokens, mini-batches of 4, evaluation of all 16 test prompts in one
batch — and only runs fewer of them, so its peak is the real run's peak. Smoke mode checks that the quickstart
recipe still takes the shortened run's overrides and measures a child that imports the PPO recipe.
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

# `python benchmarks/<script>.py` puts benchmarks/ first on the path, not the repository: put the repository
# first, so `benchmarks` is this package (pysbd installs a top-level `benchmarks` package of its own).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

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
    p.add_argument("--label", default="", help="a note stored with the result (e.g. which code was measured)")
    p.add_argument("overrides", nargs="*", help="extra recipe overrides")
    common.common_args(p, "memory")  # --threads: OMP_NUM_THREADS of the run; --max-wait 0: no quiet check
    args = p.parse_args(argv)
    if args.full and args.name == "memory":
        args.name = "memory_full"
    load = common.start(args)
    overrides = ([] if args.full else SHORT) + args.overrides
    out = tempfile.mkdtemp(prefix="alarm-mem-")
    alarm = str(Path(sys.executable).with_name("alarm"))
    cmd = [alarm, "quickstart", "--out", out, *overrides]
    if args.smoke:
        from importlib import resources

        from alarm.config import load_recipe

        load_recipe(str(resources.files("alarm") / "recipes" / "quickstart.yaml"), overrides)
        cmd = [sys.executable, "-c", "import alarm.recipes.ppo"]
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
    command = " ".join(cmd[2:] if args.smoke else ["alarm", *cmd[1:3], "<tmp>", *cmd[4:]])
    result = {"label": args.label, "src": os.environ.get("PYTHONPATH", "installed"), "command": command, "overrides": overrides, "omp_threads": args.threads, "wall_s": round(wall, 1),
              "peak_rss_gb_kernel": round(maxrss_gb, 3), "peak_rss_gb_sampled_tree": round(peak_gb, 3),
              "target_gb": 3.0, "met": max(maxrss_gb, peak_gb) <= 3.0,
              "rss_mb_timeline": samples[:: max(1, len(samples) // 200)],
              "machine": common.machine(), "load": load}
    md = "\n\n".join([
        "# Peak memory of the quickstart",
        common.md_table(["run", "peak RSS (kernel, GB)", "peak RSS (sampled tree, GB)", "wall (s)", "≤ 3 GB"],
                        [[f"`{result['command']}`", f"{maxrss_gb:.2f}", f"{peak_gb:.2f}",
                          f"{wall:.0f}", "yes" if result["met"] else "no"]]),
        common.machine_line(result["machine"], load)])
    common.write_results(args.name, result, md, args.out)
    return 0


def suite_rows(r: dict) -> list[dict]:
    peak = max(r["peak_rss_gb_kernel"], r["peak_rss_gb_sampled_tree"])
    return [common.suite_row("memory", f"peak RSS of `{r['command']}`", round(peak, 2), "GB", target="≤ 3 GB",
                             met=r["met"])]


if __name__ == "__main__":
    raise SystemExit(main())
