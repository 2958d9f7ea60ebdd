"""The paper's QA comparison at CPU scale (issue 16): selection, then five systems × seeds, then evaluation.

    nice -n 10 .venv/bin/python experiments/qa_compare.py            # resumable: rerun to continue
    nice -n 10 .venv/bin/python experiments/qa_compare.py --stage selection

One background job, every stage resumable (each start continues where the last stopped):

1. **selection** — `alarm run`'s sample + select steps on ``--selection-prompts`` training questions: the
   initial policy's greedy answer vs a pure sample (T 1, top-p 1, top-k 0) per question, every aspect's
   inconsistency with the holistic reward and its greedy-vs-sample win rate (the paper's Figure 3). The
   normalisers (μ, σ of the holistic reward) and ε fitted here are shared by every run below.
2. **train** — for each seed and each of holistic_only, aspect_only (the selected aspect), weighted_sum and
   hierarchical: PPO from the same initial policy (`alarm run`'s train step, checkpoints every
   ``--save-every`` steps, so a killed run resumes from its last checkpoint).
3. **eval** — greedy answers of the initial policy and of every trained run to the ``--eval-questions``
   validation questions (never used to train the reward models: the 80/20 split by question, seed 42, that
   `alarm rm train` uses), scored with the same rewards and normalisers; the paper's Table 1/2 layout (mean
   holistic reward, factuality rate, length; win-rate matrices with Avg. by the holistic model and by the
   factuality rate), each with a bootstrap interval over (question, seed) units. Optionally (``--judge URL``)
   the llama.cpp-served judge in both orders.

Reward models: ``alarm rm train`` with recipes/rm_{holistic,factuality,relevance}_evidence.yaml (→ runs/rm/*).
Writes experiments/results/qa_compare.{json,md} and qa_compare_answers.jsonl (every system's greedy answers and
scores, no QA-Feedback text): with it, a later ``--stage eval --judge-url …`` redoes the tables and adds the judge
without the trained policies, which live in the (uncommitted) run directory. The reward models (runs/rm) are
still needed for the selection stage, which reruns first when its directory is gone.

``--smoke MODEL_DIR`` (with ``--run-dir`` and ``--out`` of its own): every stage on a tiny saved policy with
length rewards in place of the reward models, 4 selection questions, one seed, one step, 2 evaluation questions:
that the script runs (tests/test_experiments.py), not a result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from alarm.config import build_reward_set, read_settings, validate_recipe
from alarm.data.prompts import prompt_records
from alarm.evaluation.compare import compare_scored
from alarm.evaluation.scoring import generation_rows, normalize_scores, score_records
from alarm.generation import generate_texts
from alarm.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from alarm.models import load_policy, load_tokenizer
from alarm.recipes.ppo import run

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "src" / "alarm" / "recipes" / "qa_feedback.yaml"
MODES = ("holistic_only", "aspect_only", "weighted_sum", "hierarchical")
SYSTEMS = ("initial", *MODES)
PAPER = {  # DESIGN.md §7, QA: holistic reward (z) / factuality rate / length in tokens; avg win rates
    "holistic_only": {"holistic": 0.608, "factuality_rate": 0.736, "length": 87.8, "avg_holistic": 51.76,
                      "avg_factuality": 47.87, "avg_judge": 43.07},
    "aspect_only": {"holistic": 0.538, "factuality_rate": 0.752, "length": 116.8, "avg_holistic": 43.97,
                    "avg_factuality": 51.05, "avg_judge": 53.40},
    "weighted_sum": {"holistic": 0.598, "factuality_rate": 0.738, "length": 98.5, "avg_holistic": 51.05,
                     "avg_factuality": 47.00, "avg_judge": 49.44},
    "hierarchical": {"holistic": 0.617, "factuality_rate": 0.752, "length": 97.6, "avg_holistic": 53.22,
                     "avg_factuality": 54.08, "avg_judge": 54.08},
}
PAPER_SELECTION = {"factuality": 21.4, "relevance": 40.1, "completeness": 45.1, "length": 54.0, "holistic_win": 73.7}


def base_settings(args) -> dict:
    """qa_feedback.yaml with the evidence reward models, the length aspect, and this benchmark's budget; frozen
    in the run directory at the first start, so a resumed job trains what it started with."""
    frozen = Path(args.run_dir) / "base_settings.json"
    if frozen.exists():
        return json.loads(frozen.read_text())
    s = read_settings(RECIPE)
    rm = Path(args.rm_dir)
    s["data"].update(task="qa_feedback", path=args.prompts, max_prompt_tokens=args.max_prompt_tokens, max_train_prompts=None)
    s["rewards"] = {
        "holistic": {"type": "evidence_model", "path": str(rm / "holistic_evidence")},
        "aspects": {
            "factuality": {"type": "evidence_model", "path": str(rm / "factuality_evidence")},
            "relevance": {"type": "evidence_model", "path": str(rm / "relevance_evidence")},
            "length": {"type": "length", "unit": "words"},
        },
        "normalize": ["holistic", "length"],
    }
    s["sample"].update(prompts=args.selection_prompts, samples_per_prompt=2, max_new_tokens=args.max_new_tokens,
                       batch_size=8)
    s["selection"].update(enabled=True, pairs="greedy_vs_sample", apply=False, max_conflict=None, top_k=1)
    s["ppo"].update(steps=args.steps, rollout_batch_size=args.rollout_batch, mini_batch_size=args.rollout_batch // 2,
                    grad_accum_steps=1, ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens,
                    save_every=args.save_every, temperature=1.0, top_p=1.0, top_k=0)
    s["eval"].update(max_new_tokens=args.max_new_tokens, max_prompts=args.eval_questions)
    if getattr(args, "smoke", None):  # a tiny policy; lengths stand in for the reward models
        s["model"]["name"] = args.smoke
        s["rewards"] = {"holistic": {"type": "length", "unit": "chars"},
                        "aspects": {"factuality": {"type": "length", "unit": "words"},
                                    "relevance": {"type": "length", "unit": "sentences"},
                                    "length": {"type": "length", "unit": "words"}},
                        "normalize": ["holistic"]}
        s["sample"]["batch_size"] = 4
    write_json_atomic(frozen, s)
    return json.loads(frozen.read_text())


def stage_selection(args, root: Path) -> dict:
    out = root / "selection"
    if not (out / "selection.json").exists():
        s = base_settings(args)
        s.update(output_dir=str(out), seed=args.selection_seed)
        run(validate_recipe(s), steps=("sample", "select"), overwrite=True)
    return json.loads((out / "selection.json").read_text())


def write_selection_report(args, selection: dict) -> None:
    """experiments/results/qa_selection.{json,md}: each aspect's inconsistency and win rate beside Figure 3's."""
    lines = ["# Reward selection on QA-Feedback with the paper's protocol", "",
             f"The initial policy (SmolLM2-135M-Instruct, chat prompts ≤ {args.max_prompt_tokens} tokens) answers "
             f"{selection['n_pairs']} training questions greedily and by one pure sample (T 1, top-p 1, top-k 0); the "
             "evidence reward models (trained on the 320 training questions, reading every passage) score both "
             "(`experiments/qa_compare.py`, stage 1). Conflict: share of the pairs the holistic reward decides where the "
             "aspect decides the other way (an aspect tie is no conflict) — the paper's inconsistency. Intervals: 95 % "
             "bootstrap over pairs.", "",
             "| aspect | conflict with holistic | paper (Fig. 3) | aspect tie rate | greedy-vs-sample win rate | τ-b | kept |",
             "|---|---|---|---|---|---|---|"]
    for k, v in selection["aspects"].items():
        conflict = "—" if v["conflict"] is None else f"{100 * v['conflict']:.1f} % ({v['n_conflicts']} of {v['n_holistic_decisive']})"
        tau = "—" if v["kendall_tau_b"] is None else f"{v['kendall_tau_b']:.2f}"
        lines.append(f"| {k} | {conflict} | {PAPER_SELECTION.get(k, '—')} % | {100 * v['tie_rate']:.0f} % | "
                     f"{_win(v['win_rate'])} | {tau} | {'yes' if v['kept'] else 'no'} |")
    lines.append(f"| completeness | not measured (no completeness model in this run) | {PAPER_SELECTION['completeness']} % | — | — | — | — |")
    lines += ["", f"Holistic reward, greedy vs sample: {_win(selection['holistic_win_rate'])}; paper "
              f"{PAPER_SELECTION['holistic_win']}.", "",
              f"Rule: keep the single least-inconsistent aspect (`selection.top_k: 1`): **{selection['kept'][0]}**. Caveat: "
              "our holistic model reads the error probabilities of a factuality model fitted on the same training "
              "questions (`alarm.reward_models.evidence`), so part of factuality's agreement with it is by construction."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "qa_selection.json", {"pairs": selection["n_pairs"], "selection": selection,
                                                  "paper_inconsistency_pct": PAPER_SELECTION})
    write_text_atomic(out / "qa_selection.md", "\n".join(lines) + "\n")


def selected_aspect(selection: dict) -> str:
    return selection["kept"][0]


def run_settings(args, mode: str, seed: int, aspect: str, out: Path) -> dict:
    s = base_settings(args)
    keep = [] if mode == "holistic_only" else [aspect]
    s["rewards"]["aspects"] = {k: v for k, v in s["rewards"]["aspects"].items() if k in keep}
    s["rewards"]["normalize"] = [k for k in s["rewards"]["normalize"] if k == "holistic" or k in keep]
    s["combine"]["mode"] = mode  # holistic_only: no aspects at all (the same return as hierarchical without them)
    s["selection"]["enabled"] = False
    s["ppo"]["seed"] = 41 + seed  # PPOTrainer seeds from ppo.seed (init, prompt order, sampling): seed 1 = 42
    s.update(output_dir=str(out), seed=seed)
    return s


def stage_train(args, root: Path, aspect: str) -> list[dict]:
    state = json.loads((root / "selection" / "reward_state.json").read_text())
    done = []
    for seed in args.train_seeds or args.seeds:
        for mode in MODES:
            out = root / f"{mode}-s{seed}"
            final = out / "checkpoints" / f"step-{args.steps:06d}"
            if not final.exists():
                s = run_settings(args, mode, seed, aspect, out)
                keep = set(s["rewards"]["aspects"]) | {"holistic"}
                out.mkdir(parents=True, exist_ok=True)
                if not (out / "reward_state.json").exists():  # the selection run's normalisers and ε, shared
                    write_json_atomic(out / "reward_state.json",
                                      {**state, "normalizers": {k: v for k, v in state["normalizers"].items() if k in keep}})
                    shutil.copy(root / "selection" / "initial_samples.jsonl", out / "initial_samples.jsonl")
                t0 = time.perf_counter()
                run(validate_recipe(s), steps=("train",), resume=True)
                (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
            done.append({"mode": mode, "seed": seed, "dir": str(out)})
    return done


def _checkpoints(out: Path) -> Path:
    return sorted((out / "checkpoints").glob("step-*"))[-1]


ANSWERS = "qa_compare_answers.jsonl"
ANSWER_KEYS = ("system", "seed", "prompt_id", "sample", "completion", "scores")


def answers_only(rows: list[dict], steps: int | None) -> list[dict]:
    """What a scored row keeps in the committed answers file: no prompt or passage text (QA-Feedback's)."""
    return [{**{k: r[k] for k in ANSWER_KEYS}, "steps": steps} for r in rows]


def restore_scored(saved: list[dict], records: list[dict], name: str) -> list[dict]:
    """A system's scored rows rebuilt from its saved answers and the prompt records, so the tables and a judge
    can be redone after the trained policies are gone."""
    mine = [a for a in saved if a["system"] == name]
    by_id = {r["id"]: r for r in records}
    answered = {a["prompt_id"] for a in mine}
    extra, unanswered = sorted(answered - set(by_id)), sorted(set(by_id) - answered)
    if extra or unanswered:
        raise SystemExit(f"{ANSWERS}: {name} has {len(extra)} answers to questions not in this evaluation and none "
                         f"to {len(unanswered)} of its questions (e.g. {(extra or unanswered)[0]}); use the "
                         "--prompts and --eval-questions they were made with")
    rows = generation_rows([by_id[a["prompt_id"]] for a in mine], [[a["completion"]] for a in mine])
    return [{**row, "system": name, "seed": a["seed"], "scores": a["scores"]} for row, a in zip(rows, mine)]


def eval_scored(args, root: Path, name: str, policy: str | None, seed: int | None,
                saved: list[dict]) -> list[dict]:
    """Greedy answers of one system to the validation questions, scored (cached as a scored JSONL; rebuilt from
    the saved answers file when the run directory is gone)."""
    path = root / "eval" / f"{name}.scored.jsonl"
    if path.exists():
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    recipe = validate_recipe(base_settings(args))
    restoring = any(a["system"] == name for a in saved)
    model, tokenizer = (None, load_tokenizer(recipe.model.name)) if restoring else load_policy(policy)
    records = prompt_records(recipe.data, tokenizer, recipe.data.test_split, False)[: args.eval_questions]
    if restoring:
        scored = restore_scored(saved, records, name)
        write_jsonl_atomic(path, scored)
        return scored
    texts = generate_texts(model, tokenizer, [r["prompt"] for r in records], max_new_tokens=args.max_new_tokens,
                           batch_size=8, progress=f"evaluating {name}")
    reward_set = build_reward_set(recipe)
    reward_set.load_state(json.loads((root / "selection" / "reward_state.json").read_text()))
    rows = generation_rows(records, texts)
    scores, described = score_records(reward_set, rows, batch_size=16)
    normalize_scores(scores, described, reward_set.normalizers)
    for row, sc in zip(rows, scores):
        sc["length_tokens"] = float(len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]))
    scored = [{**row, "system": name, "seed": seed, "scores": sc} for row, sc in zip(rows, scores)]
    write_jsonl_atomic(path, scored)
    return scored


METRICS = {"holistic.z": "holistic (z)", "factuality.share_positive": "factuality rate",
           "relevance.share_positive": "relevance rate", "length_tokens": "length (tokens)"}
WIN_METRICS = ("holistic.z", "factuality.share_positive")


def trained_scored(args, root: Path, name: str, seed: int, saved: list[dict]) -> tuple[list[dict], int]:
    """One trained system's scored answers and its step count: from its last checkpoint, or from the saved answers
    when its run directory is gone; a half-trained policy is never evaluated (nor cached)."""
    out = root / name
    kept = [a["steps"] for a in saved if a["system"] == name]
    if kept and not (out / "checkpoints").exists():
        steps, ckpt = kept[0], None
    else:
        if not (out / "checkpoints").exists():
            raise SystemExit(f"{out} has not been trained; run --stage train first")
        ckpt = _checkpoints(out)
        steps = int(json.loads((ckpt / "trainer_state.json").read_text())["step"])
    if steps != args.steps:
        raise SystemExit(f"{out} stopped at step {steps} of {args.steps}; run --stage train first")
    return eval_scored(args, root, name, None if ckpt is None else str(ckpt), seed, saved), steps


def stage_eval(args, root: Path, aspect: str, judge_url: str | None) -> dict:
    """Every system's scored answers, paired by (question, seed): initial is the same greedy policy per seed."""
    per_system: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    answers_path = Path(args.out) / ANSWERS
    saved = [json.loads(x) for x in answers_path.read_text().splitlines() if x.strip()] if answers_path.exists() else []
    initial = eval_scored(args, root, "initial", None, None, saved)
    answers = answers_only(initial, None)
    steps = {}
    for seed in args.seeds:
        per_system["initial"] += [{**r, "prompt_id": f"{r['prompt_id']}#s{seed}"} for r in initial]
        for mode in MODES:
            name = f"{mode}-s{seed}"
            rows, steps[name] = trained_scored(args, root, name, seed, saved)
            answers += answers_only(rows, steps[name])
            per_system[mode] += [{**r, "prompt_id": f"{r['prompt_id']}#s{seed}"} for r in rows]
    write_jsonl_atomic(answers_path, answers)
    directions = {"holistic.z": True, "factuality.share_positive": True, "relevance.share_positive": True,
                  "length_tokens": True}
    judge = None
    if judge_url:
        from alarm.evaluation.judge import Judge, JudgeConfig

        judge = Judge(JudgeConfig(base_url=judge_url, model="local", max_tokens=args.judge_max_tokens,
                                  concurrency=1, cache_path=str(root / "eval" / "judge_cache.jsonl"),
                                  failures_path=str(root / "eval" / "judge_unparsed.jsonl")))
    # every (question, seed) unit of one question is drawn together: its seeds are correlated, and "initial"
    # gives the same answer in each
    clusters = {r["prompt_id"]: r["prompt_id"].rsplit("#s", 1)[0] for r in per_system["initial"]}
    # all five: means with intervals, and every system against the initial policy
    result, _, _ = compare_scored(per_system, directions, root / "eval" / "compare", metrics=list(METRICS), seed=0,
                                  clusters=clusters)
    # the paper's Table 2: the four trained systems against each other (its Avg. leaves the initial policy out)
    trained = {k: v for k, v in per_system.items() if k != "initial"}
    paper_layout, judge_result, _ = compare_scored(trained, directions, root / "eval" / "compare_trained",
                                                   metrics=list(WIN_METRICS), seed=0, judge=judge,
                                                   judge_max_prompts=args.judge_prompts, progress=True,
                                                   clusters=clusters)
    return {"result": result, "trained": paper_layout, "judge": judge_result, "steps": steps}


def _cell(mean: dict) -> str:
    return f"{mean['mean']:.3f} [{mean['low']:.3f}, {mean['high']:.3f}]"


def _win(c: dict | None) -> str:
    if not c or c.get("pct_low") is None:
        return "—"
    return f"{c['win_rate_pct']:.1f} [{c['pct_low']:.1f}, {c['pct_high']:.1f}]"


def write_results(args, root: Path, selection: dict, aspect: str, evaluated: dict, seconds: float) -> None:
    result, trained, judge = evaluated["result"], evaluated["trained"], evaluated["judge"]
    walls = {p.parent.name: float(p.read_text()) for p in root.glob("*-s*/wall_seconds.txt")}
    earlier = Path(args.out) / "qa_compare.json"
    if not walls and earlier.exists():  # evaluated from the saved answers: the runs' times are the earlier report's
        walls = json.loads(earlier.read_text())["train_wall_seconds"]
    matrices = {"holistic": trained["matrices"]["holistic.z"], "factuality": trained["matrices"]["factuality.share_positive"]}
    if judge:
        matrices["judge"] = judge["matrix"]
    vs_initial = {m: {name: result["matrices"][m]["cells"][name].get("initial") for name in MODES} for m in WIN_METRICS}
    table = {name: {"means": {m: result["means"][name][m] for m in METRICS},
                    "avg_win_rate": {k: mat["avg"].get(name) for k, mat in matrices.items()},
                    "win_rate_vs_initial": {m: vs_initial[m].get(name) for m in WIN_METRICS}} for name in SYSTEMS}
    data = {"seeds": args.seeds, "steps": evaluated["steps"], "eval_questions": args.eval_questions,
            "eval_units": result["n_prompts"],
            "systems": list(SYSTEMS), "selected_aspect": aspect, "selection": selection,
            "paper_selection_inconsistency_pct": PAPER_SELECTION, "table": table,
            "win_rate_matrices": matrices, "win_rate_vs_initial": vs_initial, "paper": PAPER, "settings": vars(args),
            "train_wall_seconds": walls, "total_train_seconds": round(sum(walls.values()), 1),
            "interval": "95% bootstrap over questions (each drawn with all its seeds)"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "qa_compare.json", json.loads(json.dumps(data, default=str)))
    lines = ["# QA-Feedback: the paper's comparison at CPU scale", "",
             f"SmolLM2-135M-Instruct + LoRA PPO, {args.steps} steps × {args.rollout_batch} prompts, seeds "
             f"{args.seeds}; greedy answers to {args.eval_questions} validation questions (never seen by the reward "
             f"models), paired by (question, seed). Selected aspect: **{aspect}**. Intervals: 95% bootstrap over "
             "questions, each drawn with all its seeds.", "",
             "| system | holistic (z) | factuality rate | length (tokens) | avg win, holistic | avg win, factuality |"
             + (" avg win, judge |" if judge else "") + " paper: holistic / fact. rate / length | paper avg win (hol. / fact.) |",
             "|---|---|---|---|---|---|" + ("---|" if judge else "") + "---|---|"]
    for name in SYSTEMS:
        row = table[name]
        paper = PAPER.get(name)
        lines.append(f"| {name} | {_cell(row['means']['holistic.z'])} | {_cell(row['means']['factuality.share_positive'])} | "
                     f"{_cell(row['means']['length_tokens'])} | {_win(row['avg_win_rate']['holistic'])} | "
                     f"{_win(row['avg_win_rate']['factuality'])} |"
                     + (f" {_win(row['avg_win_rate'].get('judge'))} |" if judge else "")
                     + (f" {paper['holistic']} / {paper['factuality_rate']} / {paper['length']} | "
                        f"{paper['avg_holistic']} / {paper['avg_factuality']} |" if paper else " — | — |"))
    lines += ["", "Avg. win rate (the paper's Table 2 \"Avg.\"): mean of the row system's win rates (ties excluded) "
              "against the other three trained systems; full matrices and each system's win rate against the initial "
              "policy are in the JSON.", "",
              "| system | win rate vs initial, holistic | win rate vs initial, factuality rate |", "|---|---|---|"]
    lines += [f"| {name} | {_win(vs_initial['holistic.z'][name])} | {_win(vs_initial['factuality.share_positive'][name])} |"
              for name in MODES]
    sel = selection
    lines += ["", f"## Reward selection ({sel.get('n_pairs')} greedy-vs-sample pairs of the initial policy)", "",
              "| aspect | inconsistency with holistic (%) | paper (%) | greedy-vs-sample win rate (%) |", "|---|---|---|---|"]
    for k, st in sel["aspects"].items():
        conflict = "—" if st["conflict"] is None else f"{100 * st['conflict']:.1f}"
        lines.append(f"| {k} | {conflict} ({st['n_conflicts']} of {st['n_holistic_decisive']}) | "
                     f"{PAPER_SELECTION.get(k, '—')} | {_win(st['win_rate'])} |")
    lines.append(f"| holistic (reference) | — | — | {_win(sel['holistic_win_rate'])} (paper {PAPER_SELECTION['holistic_win']}) |")
    lines.append("")
    lines.append(f"Training time: {sum(walls.values()) / 60:.0f} min of one thread for {len(walls)} runs "
                 "(one thread per run, two runs at a time on 2 cores; a run's wall time includes any pause of the machine).")
    write_text_atomic(out / "qa_compare.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


SMOKE = {"seeds": [1], "steps": 1, "rollout_batch": 2, "ppo_epochs": 1, "max_new_tokens": 4, "save_every": 1,
         "selection_prompts": 4, "eval_questions": 2, "max_prompt_tokens": 1024}  # byte-level pieces: long prompts


def add_budget_arguments(ap: argparse.ArgumentParser, run_dir: str) -> None:
    """The QA comparison's data, budget and evaluation arguments — one definition, so the ablation
    (qa_ablation.py) trains with exactly these settings."""
    ap.add_argument("--rm-dir", default="runs/rm")
    ap.add_argument("--prompts", default="../shared/data/qa_feedback/prompts.json")
    ap.add_argument("--run-dir", default=run_dir)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rollout-batch", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-prompt-tokens", type=int, default=256)
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--selection-prompts", type=int, default=120)
    ap.add_argument("--selection-seed", type=int, default=42)
    ap.add_argument("--eval-questions", type=int, default=80)
    ap.add_argument("--judge-url", default=None, help="OpenAI-compatible server of the judge (llama.cpp), optional")
    ap.add_argument("--judge-prompts", type=int, default=None, help="(question, seed) units the judge reads")
    ap.add_argument("--judge-max-tokens", type=int, default=64)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("selection", "train", "eval", "all"), default="all")
    add_budget_arguments(ap, "runs/qa_compare")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=None,
                    help="train only these of --seeds (one process per core: e.g. --train-seeds 3 beside the main job)")
    ap.add_argument("--smoke", metavar="MODEL_DIR", default=None, help="a tiny saved policy, length rewards: seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    if args.train_seeds and not set(args.train_seeds) <= set(args.seeds):
        raise SystemExit(f"--train-seeds {args.train_seeds} must be among --seeds {args.seeds}")
    root = Path(args.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    budget = {k: v for k, v in vars(args).items() if k not in ("stage", "judge_url", "judge_prompts", "out", "train_seeds")}
    saved = root / "benchmark_args.yaml"
    if saved.exists() and yaml.safe_load(saved.read_text()) != budget:
        old = yaml.safe_load(saved.read_text())
        changed = sorted(k for k in set(old) | set(budget) if old.get(k) != budget.get(k))
        raise SystemExit(f"{root} was started with other settings ({', '.join(changed)}); use those or another --run-dir")
    write_text_atomic(saved, yaml.safe_dump(budget))
    t0 = time.perf_counter()
    selection = stage_selection(args, root)
    write_selection_report(args, selection)
    aspect = selected_aspect(selection)
    print(f"selected aspect: {aspect}")
    if args.stage in ("train", "all"):
        stage_train(args, root, aspect)
    if args.stage in ("eval", "all"):
        evaluated = stage_eval(args, root, aspect, args.judge_url)
        write_results(args, root, selection, aspect, evaluated, time.perf_counter() - t0)
    print(f"stage(s) done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
