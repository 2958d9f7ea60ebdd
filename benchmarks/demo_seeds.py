"""Does `make demo`'s result hold with another seed? The quickstart once per seed, each timed, its headline kept.

    nice -n 5 .venv/bin/python benchmarks/demo_seeds.py --seeds 1 2 3 4 5 --name design    # settle the design
    nice -n 5 .venv/bin/python benchmarks/demo_seeds.py --seeds 6 7 8 9 10                 # then report fresh seeds

Each seed runs ``alarm quickstart seed=N`` (the recipe's seed drives the selection samples, the trainer's
initialisation, prompt order and sampling) in ``runs/demo_seeds/<name>/seed-N`` under ``/usr/bin/time -v`` (wall
time and peak memory of the whole command), then reads the run's ``eval.json`` headline: the paired difference of
the holistic reward (trained − initial, question by question, with its 95 % bootstrap interval), the per-question
win rate with its ties, the length change and the length-controlled difference (questions whose answer length
changed by < 20 %). Resumable: a seed already in the JSON is not run again (``--rerun`` forces it). Writes
``benchmarks/results/demo_seeds[-<name>].{json,md}``; the design seeds and the fresh seeds go to different files,
so the fresh ones are never used to settle the design.

``--smoke DIR``: the same pipeline on a tiny saved policy, one short step, for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time -v (when present): rc, wall seconds and peak RSS in GiB (its KiB / 2**20)."""
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(timer + cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ}).returncode
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {"rc": rc, "wall_seconds": round(wall, 1), "peak_rss_gb": round(int(rss.group(1)) / 2**20, 2) if rss else None}


def seed_result(seed: int, run_dir: Path, timing: dict) -> dict:
    head = json.loads((run_dir / "eval.json").read_text())["headline"]
    pd, wr, lc, ctrl = head["paired_difference"], head["win_rate"], head["length_change"], head["length_controlled"]
    return {"seed": seed, "metric": head["metric"], "n_prompts": head["n_prompts"],
            "answers": head.get("answers", "greedy answers"),
            "paired_difference": {k: pd[k] for k in ("mean", "low", "high")},
            "win_rate": wr, "length_change": lc, "length_controlled": ctrl,
            "aspects": head.get("aspects", {}), "excludes_zero": ("above" if pd["low"] > 0 else
                                                                  "below" if pd["high"] < 0 else "no"),
            **timing}


def markdown(data: dict) -> str:
    lines = [f"# The demo across seeds ({data['name']})", "",
             f"`alarm quickstart seed=N` ({data['overrides'] or 'the recipe as written'}) on {data['machine']}. "
             "Paired difference: trained − initial holistic reward (z), question by question, 95 % bootstrap "
             "interval; length-controlled: the same over the questions whose answer length changed by < 20 %. "
             f"Answers: {', '.join(sorted({r.get('answers', 'greedy answers') for r in data['results']}))}; "
             "1-minute load at each seed's start in the last column.", "",
             "| seed | paired holistic difference | win rate (ties) | length change (words) | length-controlled "
             "difference | wall | peak memory | load |", "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        pd, wr, lc, ctrl = r["paired_difference"], r["win_rate"], r["length_change"], r["length_controlled"]
        ctrl_s = ("—" if ctrl.get("mean") is None else
                  f"{ctrl['mean']:+.3f} [{ctrl['low']:+.3f}, {ctrl['high']:+.3f}] (n {ctrl['n']})")
        win = "—" if wr.get("pct") is None else f"{wr['pct']:.1f}" + (
            "" if wr.get("low") is None else f" [{wr['low']:.1f}, {wr['high']:.1f}]") + f" ({wr['ties']} ties)"
        lines.append(f"| {r['seed']} | {pd['mean']:+.3f} [{pd['low']:+.3f}, {pd['high']:+.3f}] | {win} | "
                     f"{lc['mean']:+.1f} | {ctrl_s} | {r['wall_seconds']:.0f} s | {r['peak_rss_gb']} GiB | "
                     f"{r.get('load_at_start', '—')} |")
    s = data["summary"]
    lines += ["", f"Intervals above 0: {s['above_zero']} of {s['n']}; below 0: {s['below_zero']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[6, 7, 8, 9, 10])
    ap.add_argument("--name", default=None, help="a design's name: results go to demo_seeds-<name>.{json,md}")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--run-root", default=str(ROOT / "runs" / "demo_seeds"))
    ap.add_argument("--rerun", action="store_true", help="run seeds already in the results again")
    ap.add_argument("--smoke", metavar="MODEL_DIR", default=None,
                    help="a tiny saved policy, a few steps of a few tokens: seconds (the tests' mode)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every seed")
    args = ap.parse_args(argv)
    stem = "demo_seeds" + (f"-{args.name}" if args.name else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    data = json.loads(path.read_text()) if path.exists() else {"results": []}
    if data.get("overrides", args.overrides) != args.overrides:
        raise SystemExit(f"{path} was made with overrides {data['overrides']}; use them, or another --name")
    done = {r["seed"] for r in data["results"]}
    alarm = str(Path(sys.executable).with_name("alarm"))
    smoke = [f"model.name={args.smoke}", "ppo.lora_layers=null", "ppo.steps=1", "ppo.rollout_batch_size=4",
             "ppo.mini_batch_size=2", "ppo.ppo_epochs=1", "sample.prompts=4", "ppo.max_new_tokens=4",
             "sample.max_new_tokens=4", "eval.max_new_tokens=4"] if args.smoke else []
    for seed in args.seeds:
        if seed in done and not args.rerun:
            continue
        run_dir = Path(args.run_root) / (args.name or "fresh") / f"seed-{seed}"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [alarm, "quickstart", "--out", str(run_dir), "--overwrite", f"seed={seed}", *smoke, *args.overrides]
        print(f"seed {seed}: {' '.join(cmd[1:])}", flush=True)
        load = round(os.getloadavg()[0], 2)
        timing = {**timed(cmd, run_dir.parent / f"seed-{seed}.log"), "load_at_start": load}
        if timing["rc"] != 0:
            raise SystemExit(f"seed {seed} failed (rc {timing['rc']}); see {run_dir.parent / f'seed-{seed}.log'}")
        data["results"] = [r for r in data["results"] if r["seed"] != seed] + [seed_result(seed, run_dir, timing)]
        data["results"].sort(key=lambda r: r["seed"])
        res = data["results"]
        data.update(name=args.name or "fresh seeds", overrides=args.overrides, seeds=[r["seed"] for r in res],
                    machine=f"{os.cpu_count()} CPUs, 1-minute load {os.getloadavg()[0]:.1f} after the last seed",
                    summary={"n": len(res), "above_zero": sum(r["excludes_zero"] == "above" for r in res),
                             "below_zero": sum(r["excludes_zero"] == "below" for r in res)})
        path.write_text(json.dumps(data, indent=1) + "\n")
        (out / f"{stem}.md").write_text(markdown(data))
    print(markdown(data) if data["results"] else "no seeds run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
