"""Cross-validated reward-model quality: every recipe under src/alarm/recipes/rm_*.yaml, 5 folds by question.

    nice -n 10 .venv/bin/python experiments/rm_cv.py [--only holistic_evidence,factuality_evidence]

Runs ``alarm rm evaluate --config <recipe> --folds 5`` (k-fold by question over all 400 shared questions) for
each recipe and collects mean ± std of each model and its trivial baselines into
experiments/results/rm_cv.{json,md}. Resumable: a recipe whose ``cv.json`` exists under --run-dir is not rerun.
``--smoke`` (with ``--run-dir`` and ``--out`` of its own): the holistic evidence model, 2 folds over the first 24
questions of the shared feedback file: that the script runs (tests/test_experiments.py), not a result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent / "src" / "alarm" / "recipes"
ORDER = ("holistic_evidence", "factuality_evidence", "relevance_evidence", "holistic", "factuality", "relevance",
         "completeness")
TARGETS = {  # issue 16: cross-validated margins over the trivial baseline
    "holistic": ("pairwise_accuracy", "longer_is_better", 0.08),
    "factuality": ("error_f1", "always_error_f1", 0.10),
    "relevance": ("error_f1", "always_error_f1", 0.05),
}


def run(name: str, run_dir: Path, folds: int, overrides: tuple[str, ...] = ()) -> dict:
    out = run_dir / name
    cv = out / "cv.json"
    if not cv.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "alarm.cli", "rm", "evaluate", "--config", str(RECIPES / f"rm_{name}.yaml"),
                        "--folds", str(folds), "--out", str(out), *overrides], check=True)
        summary = json.loads(cv.read_text())
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        cv.write_text(json.dumps(summary, indent=2))
    return json.loads(cv.read_text())


def table(results: dict) -> str:
    lines = ["# Reward models, 5-fold cross-validation by question (400 QA-Feedback questions)", "",
             "| recipe | architecture | metric | model | baseline | margin | target | met | time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        m = s["metrics"]
        metric, base, need = TARGETS.get(s["kind"], ("auc", "majority_accuracy", None))
        if s["kind"] == "completeness":
            metric, base = "accuracy", "majority_accuracy"
        margin = m[metric]["mean"] - m[base]["mean"]
        met = "—" if need is None else ("yes" if margin >= need else f"no (short by {need - margin:.3f})")
        lines.append(f"| rm_{name} | {s['architecture']} | {metric} | {m[metric]['mean']:.3f} ± {m[metric]['std']:.3f} | "
                     f"{base} {m[base]['mean']:.3f} ± {m[base]['std']:.3f} | {margin:+.3f} | "
                     f"{'' if need is None else f'+{need:.2f}'} | {met} | {s.get('seconds', '')} |")
    lines += ["", "Mean ± std over the 5 folds; each fold's model never saw its fold's questions. Span models: F1 of "
              "the error class per (sub-)sentence of the annotated answer; holistic: pairwise accuracy on the decisive "
              "preferences. Times on 2 shared CPU cores."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated recipe names (default: all, in a fixed order)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--run-dir", default="runs/rm_cv")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--smoke", action="store_true", help="one model, 2 folds, 24 questions: seconds")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(ORDER)
    run_dir = Path(args.run_dir)
    overrides: tuple[str, ...] = ()
    if args.smoke:
        names, args.folds = ["holistic_evidence"], 2
        feedback = json.loads((HERE.parents[1] / "shared" / "data" / "qa_feedback" / "feedback.json").read_text())
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "feedback.json").write_text(json.dumps(feedback[:24]))
        overrides = (f"data={run_dir / 'feedback.json'}",)
    results = {}
    for name in names:
        results[name] = run(name, run_dir, args.folds, overrides)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        keep = {k: {kk: vv for kk, vv in v.items() if kk != "per_fold"} for k, v in results.items()}
        (out / "rm_cv.json").write_text(json.dumps(keep, indent=2))
        (out / "rm_cv.md").write_text(table(results))
        print(table(results))


if __name__ == "__main__":
    main()
