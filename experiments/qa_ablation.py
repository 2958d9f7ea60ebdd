"""The paper's Table 5 at CPU scale: hierarchical ALaRM built on each single aspect, on QA-Feedback.

    nice -n 10 .venv/bin/python experiments/qa_ablation.py --lane 0 &     # one process per core,
    nice -n 10 .venv/bin/python experiments/qa_ablation.py --lane 1 &     # each resumable: rerun to continue
    .venv/bin/python experiments/qa_ablation.py --stage eval              # the table, once both lanes are done

Does the aspect reward selection keeps make ALaRM work best? For each aspect — factuality (the one selection keeps),
relevance and length; completeness only once a completeness model clears its trivial baseline cross-validated,
which none does (`completeness_probe.py`) — PPO trains the hierarchical combination of the holistic reward and
that aspect alone, with exactly the QA comparison's settings (`qa_compare.py`: SmolLM2-135M-Instruct + LoRA, 40 steps × 4 prompts, the
same selection run's normalisers and ε, 3 seeds, the same 80 validation questions no reward model trained on).

Stages (every one resumable):

1. **selection** — `qa_compare.py`'s stage 1 in this run directory: the initial policy's greedy answer vs a pure
   sample on 120 training questions; each aspect's inconsistency with the holistic reward and its greedy-vs-sample
   win rate (the statistics Table 5 is set beside); the normalisers and ε every run below shares.
2. **train** — the jobs (seed-major: every aspect of seed 1, then seed 2, …) split over ``--lanes`` processes;
   lane i takes jobs i, i + lanes, …; checkpoints every 5 steps, so a killed lane resumes its run.
3. **eval** — (each lane evaluates its runs as they finish; ``--stage collect`` saves the answers so far) greedy answers of the initial policy and of every trained run to the 80 validation questions,
   scored with every reward; the paper's Table 5 layout: each variant's average win rate against the other
   variants by the holistic model and by the factuality rate (and by a judge with ``--judge-url``), with 95 %
   bootstrap intervals over questions (each drawn with all its seeds); mean holistic reward, factuality rate and
   length; the selection statistics beside them.

Writes experiments/results/qa_ablation.{json,md} and qa_ablation_answers.jsonl (every system's greedy answers and
scores, no QA-Feedback text), so a judge can be added later without retraining (``--stage eval --judge-url …``
rebuilds the tables from that file when the run directory is gone; the reward models in runs/rm are still needed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import qa_compare as qc  # noqa: E402  (the QA comparison's settings, stages and scoring, reused as they are)

from alarm.evaluation.compare import compare_scored  # noqa: E402
from alarm.io import write_json_atomic, write_jsonl_atomic, write_text_atomic  # noqa: E402
from alarm.recipes.ppo import run  # noqa: E402

ASPECTS = ("factuality", "relevance", "length")
ANSWERS = "qa_ablation_answers.jsonl"
PAPER_TABLE5 = {  # DESIGN.md §7: average win rate of ALaRM built on each single aspect, QA
    "factuality": {"holistic": 51.93, "judge": 54.74},
    "relevance": {"holistic": 46.89, "judge": 55.44},
    "completeness": {"holistic": 49.51, "judge": 44.97},
    "length": {"holistic": 51.67, "judge": 44.84},
}
METRICS = {"holistic.z": "holistic (z)", "factuality.share_positive": "factuality rate",
           "length_tokens": "length (tokens)"}
WIN_METRICS = ("holistic.z", "factuality.share_positive")


def system(aspect: str, seed: int) -> str:
    return f"hierarchical-{aspect}-s{seed}"


def jobs(args) -> list[tuple[int, str]]:
    return [(seed, aspect) for seed in args.seeds for aspect in args.aspects]


def saved_systems(args) -> set[str]:
    """The trained systems whose answers the committed answers file already holds (at the full step count): an
    earlier session's finished runs, not trained again when their run directory is gone."""
    path = Path(args.out) / ANSWERS
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return {r["system"] for r in rows if r["steps"] == args.steps}


def train_one(args, root: Path, seed: int, aspect: str) -> bool:
    """Train one run unless it is done (its last checkpoint, or its answers saved); True when it was trained."""
    out = root / system(aspect, seed)
    if (out / "checkpoints" / f"step-{args.steps:06d}").exists() or out.name in saved_systems(args):
        return False
    s = qc.run_settings(args, "hierarchical", seed, aspect, out)
    state = json.loads((root / "selection" / "reward_state.json").read_text())
    keep = set(s["rewards"]["aspects"]) | {"holistic"}
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "reward_state.json").exists():  # the selection run's normalisers and ε, shared by every run
        write_json_atomic(out / "reward_state.json",
                          {**state, "normalizers": {k: v for k, v in state["normalizers"].items() if k in keep}})
        shutil.copy(root / "selection" / "initial_samples.jsonl", out / "initial_samples.jsonl")
    t0 = time.perf_counter()
    print(f"training {out.name}", flush=True)
    run(qc.validate_recipe(s), steps=("train",), resume=True)
    earlier = float((out / "wall_seconds.txt").read_text()) if (out / "wall_seconds.txt").exists() else 0.0
    (out / "wall_seconds.txt").write_text(f"{earlier + time.perf_counter() - t0:.1f}\n")
    return True


def stage_train(args, root: Path) -> None:
    """Each lane trains its jobs and evaluates each trained policy at once (its scored answers cached in
    root/eval), so `--stage collect` can save the answers of every finished run before the last one ends."""
    todo = jobs(args)
    lanes = range(args.lanes) if args.lane is None else [args.lane]
    for lane in lanes:
        for seed, aspect in todo[lane:: args.lanes]:
            name = system(aspect, seed)
            if train_one(args, root, seed, aspect) or (root / name / "checkpoints").exists():
                qc.eval_scored(args, root, name, str(qc._checkpoints(root / name)), seed, [])


def merge_answers(saved: list[dict], fresh: list[dict]) -> list[dict]:
    """The answers file's rows: every system of ``fresh`` replaces its saved rows, every other saved system is
    kept (a run over other seeds never drops the answers already committed); ordered by system."""
    by_system: dict[str, list[dict]] = {}
    for a in saved:
        by_system.setdefault(a["system"], []).append(a)
    renewed: dict[str, list[dict]] = {}
    for a in fresh:
        renewed.setdefault(a["system"], []).append(a)
    by_system.update(renewed)
    return [a for name in sorted(by_system) for a in by_system[name]]


def collect(args, root: Path) -> list[str]:
    """The answers file from every evaluated system so far (and the systems it already holds), written atomically:
    what a session that ends before the last run can commit, and a later one restores from."""
    path = Path(args.out) / ANSWERS
    saved = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    fresh = []
    for f in sorted((root / "eval").glob("*.scored.jsonl")):
        name = f.name.removesuffix(".scored.jsonl")
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        steps = None if name == "initial" else int(json.loads(
            (qc._checkpoints(root / name) / "trainer_state.json").read_text())["step"])
        fresh += qc.answers_only(rows, steps)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    merged = merge_answers(saved, fresh)
    write_jsonl_atomic(path, merged)
    return sorted({a["system"] for a in merged})


def stage_eval(args, root: Path) -> dict:
    """Every system's scored answers, paired by (question, seed)."""
    answers_path = Path(args.out) / ANSWERS
    saved = [json.loads(x) for x in answers_path.read_text().splitlines() if x.strip()] if answers_path.exists() else []
    initial = qc.eval_scored(args, root, "initial", None, None, saved)
    answers = qc.answers_only(initial, None)
    per_system: dict[str, list[dict]] = {"initial": [], **{a: [] for a in args.aspects}}
    steps = {}
    for seed in args.seeds:
        per_system["initial"] += [{**r, "prompt_id": f"{r['prompt_id']}#s{seed}"} for r in initial]
        for aspect in args.aspects:
            name = system(aspect, seed)
            rows, steps[name] = qc.trained_scored(args, root, name, seed, saved)
            answers += qc.answers_only(rows, steps[name])
            per_system[aspect] += [{**r, "prompt_id": f"{r['prompt_id']}#s{seed}"} for r in rows]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(answers_path, merge_answers(saved, answers))  # other seeds' answers stay
    directions = dict.fromkeys(METRICS, True)
    clusters = {r["prompt_id"]: r["prompt_id"].rsplit("#s", 1)[0] for r in per_system["initial"]}
    result, _, _ = compare_scored(per_system, directions, root / "eval" / "compare", metrics=list(METRICS), seed=0,
                                  clusters=clusters)
    judge = None
    if args.judge_url:
        from alarm.evaluation.judge import Judge, JudgeConfig

        judge = Judge(JudgeConfig(base_url=args.judge_url, model="local", max_tokens=args.judge_max_tokens,
                                  concurrency=1, cache_path=str(root / "eval" / "judge_cache.jsonl"),
                                  failures_path=str(root / "eval" / "judge_unparsed.jsonl")))
    variants = {k: v for k, v in per_system.items() if k != "initial"}
    table5, judge_result, _ = compare_scored(variants, directions, root / "eval" / "compare_variants",
                                             metrics=list(WIN_METRICS), seed=0, judge=judge,
                                             judge_max_prompts=args.judge_prompts, progress=True, clusters=clusters)
    return {"result": result, "variants": table5, "judge": judge_result, "steps": steps}


def write_results(args, root: Path, selection: dict, evaluated: dict) -> dict:
    result, variants, judge = evaluated["result"], evaluated["variants"], evaluated["judge"]
    matrices = {"holistic": variants["matrices"]["holistic.z"],
                "factuality": variants["matrices"]["factuality.share_positive"]}
    if judge:
        matrices["judge"] = judge["matrix"]
    runs = {system(aspect, seed) for seed, aspect in jobs(args)}
    walls = {p.parent.name: float(p.read_text()) for p in root.glob("hierarchical-*-s*/wall_seconds.txt")
             if p.parent.name in runs}  # this report's seeds only
    earlier = Path(args.out) / f"{args.report}.json"
    if not walls and earlier.exists():  # evaluated from the saved answers: the runs' times are the earlier report's
        walls = json.loads(earlier.read_text())["train_wall_seconds"]
    sel = selection["aspects"]
    table = {a: {"avg_win_rate": {k: mat["avg"].get(a) for k, mat in matrices.items()},
                 "means": {m: result["means"][a][m] for m in METRICS},
                 "selection": {"inconsistency": sel.get(a, {}).get("conflict"),
                               "n_conflicts": sel.get(a, {}).get("n_conflicts"),
                               "n_holistic_decisive": sel.get(a, {}).get("n_holistic_decisive"),
                               "greedy_vs_sample_win_rate": sel.get(a, {}).get("win_rate"),
                               "kept": sel.get(a, {}).get("kept")},
                 "paper": PAPER_TABLE5.get(a)} for a in args.aspects}
    table["initial"] = {"means": {m: result["means"]["initial"][m] for m in METRICS}}
    data = {"seeds": args.seeds, "steps": args.steps, "eval_questions": args.eval_questions,
            "eval_units": result["n_prompts"], "aspects": list(args.aspects), "selected_aspect": selection["kept"][0],
            "table": table, "win_rate_matrices": matrices, "paper_table5": PAPER_TABLE5,
            "completeness": "not run: no completeness model clears its trivial baseline cross-validated",
            "trained_steps": evaluated["steps"], "train_wall_seconds": walls,
            "total_train_seconds": round(sum(walls.values()), 1), "settings": vars(args),
            "interval": "95% bootstrap over questions (each drawn with all its seeds)"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{args.report}.json", json.loads(json.dumps(data, default=str)))
    lines = ["# Which aspect should ALaRM be built on? The paper's Table 5 on QA-Feedback", "",
             f"Hierarchical ALaRM on the holistic reward and one aspect, SmolLM2-135M-Instruct + LoRA PPO, {args.steps} "
             f"steps × {args.rollout_batch} prompts, seeds {args.seeds}; greedy answers to {args.eval_questions} "
             "validation questions no reward model or policy trained on, paired by (question, seed). Avg. win rate: "
             "the mean of the row variant's win rates (ties excluded) against the other variants. Intervals: 95 % "
             "bootstrap over questions, each drawn with all its seeds.", "",
             "| aspect | avg win, holistic | avg win, factuality rate |" + (" avg win, judge |" if judge else "")
             + " paper avg win (holistic / gpt-3.5) | holistic (z) | factuality rate | length (tokens) "
             "| inconsistency with holistic | greedy-vs-sample win rate | selection keeps |",
             "|---|---|---|" + ("---|" if judge else "") + "---|---|---|---|---|---|---|"]
    for a in args.aspects:
        row, p = table[a], PAPER_TABLE5.get(a)
        inc = row["selection"]["inconsistency"]
        lines.append(f"| {a} | {qc._win(row['avg_win_rate']['holistic'])} | {qc._win(row['avg_win_rate']['factuality'])} |"
                     + (f" {qc._win(row['avg_win_rate'].get('judge'))} |" if judge else "")
                     + f" {p['holistic']} / {p['judge']} | {qc._cell(row['means']['holistic.z'])} | "
                     f"{qc._cell(row['means']['factuality.share_positive'])} | {_length(row['means']['length_tokens'])} | "
                     + ("—" if inc is None else f"{100 * inc:.1f} %") + f" | {qc._win(row['selection']['greedy_vs_sample_win_rate'])} | "
                     + ("yes" if row["selection"]["kept"] else "no") + " |")
    ini = table["initial"]["means"]
    lines += ["| (initial policy) | — | — |" + (" — |" if judge else "") + " — | "
              f"{qc._cell(ini['holistic.z'])} | {qc._cell(ini['factuality.share_positive'])} | {_length(ini['length_tokens'])} | — | — | — |",
              "", "Head to head (row vs column; win rate %, ties excluded; wins–losses, ties):", "",
              "| row vs column | " + " | ".join(f"{k} rate" if k == "factuality" else k for k in matrices) + " |",
              "|---|" + "---|" * len(matrices)]
    for i, a in enumerate(args.aspects):
        for b in args.aspects[i + 1:]:
            cells = [matrices[k]["cells"].get(a, {}).get(b) for k in matrices]
            lines.append(f"| {a} vs {b} | " + " | ".join(
                "—" if c is None else f"{qc._win(c)} ({c['wins']}–{c['losses']}, {c['ties']})" for c in cells) + " |")
    lines += ["", "Completeness (the paper's fourth aspect) is not run: no completeness model of ours clears its trivial "
              "baseline cross-validated (`completeness_probe.md`).", "",
              f"Training: {len(walls)} runs of one thread, two at a time on 2 cores; recorded wall time per run "
              f"{min(walls.values(), default=0) / 60:.0f}–{max(walls.values(), default=0) / 60:.0f} min (a run killed "
              "and resumed records its last part only; most shared the cores with other jobs)."]
    write_text_atomic(out / f"{args.report}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return data


def _length(mean: dict) -> str:
    return f"{mean['mean']:.1f} [{mean['low']:.1f}, {mean['high']:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("selection", "train", "collect", "eval", "all"), default="train")
    ap.add_argument("--lane", type=int, default=None, help="train only this lane's jobs (one process per core)")
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--aspects", nargs="+", default=list(ASPECTS), choices=ASPECTS)
    ap.add_argument("--report", default="qa_ablation",
                    help="the table's file name under --out, NAME.{json,md} (e.g. a replication on other --seeds)")
    qc.add_budget_arguments(ap, "runs/qa_ablation")  # the QA comparison's budget, unchanged
    args = ap.parse_args()
    if args.lane is not None and not 0 <= args.lane < args.lanes:
        raise SystemExit(f"--lane {args.lane} must be in 0..{args.lanes - 1}")
    root = Path(args.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    # the seeds are not part of a run's settings: a later start may add seeds, or evaluate the ones done
    budget = {k: v for k, v in vars(args).items()
              if k not in ("stage", "lane", "judge_url", "judge_prompts", "out", "seeds", "report")}
    saved = root / "ablation_args.yaml"
    if saved.exists() and yaml.safe_load(saved.read_text()) != budget:
        old = yaml.safe_load(saved.read_text())
        changed = sorted(k for k in set(old) | set(budget) if old.get(k) != budget.get(k))
        raise SystemExit(f"{root} was started with other settings ({', '.join(changed)}); use those or another --run-dir")
    write_text_atomic(saved, yaml.safe_dump(budget))
    t0 = time.perf_counter()
    selection = qc.stage_selection(args, root)  # the lanes wait on each other through its files: run it alone first
    if args.stage in ("train", "all"):
        stage_train(args, root)
    if args.stage == "collect":
        print("answers saved for: " + ", ".join(collect(args, root)))
    if args.stage in ("eval", "all"):
        write_results(args, root, selection, stage_eval(args, root))
    print(f"stage(s) done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
