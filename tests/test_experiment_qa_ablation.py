"""experiments/qa_ablation.py: the lanes split the jobs without overlap, and the Table 5 layout is built from
scored answers (synthetic ones here: seconds, no model)."""

import argparse
import importlib.util
import json
import random
import re
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "qa_ablation.py"
sys.path.insert(0, str(_PATH.parent))
_spec = importlib.util.spec_from_file_location("qa_ablation_exp", _PATH)
qa_ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qa_ablation)


def _args(tmp_path, **kw):
    base = dict(seeds=[1, 2, 3], aspects=list(qa_ablation.ASPECTS), lanes=2, steps=40, rollout_batch=4,
                eval_questions=6, out=str(tmp_path / "out"), judge_url=None, report="qa_ablation")
    return argparse.Namespace(**{**base, **kw})


def test_the_lanes_cover_every_job_once_seed_by_seed(tmp_path):
    args = _args(tmp_path)
    todo = qa_ablation.jobs(args)
    assert todo[:3] == [(1, "factuality"), (1, "relevance"), (1, "length")]
    lanes = [todo[i:: args.lanes] for i in range(args.lanes)]
    assert sorted(j for lane in lanes for j in lane) == sorted(todo) and len(set(todo)) == 9


def _scored(name, seed, shift, rng):
    return [{"prompt_id": f"q{i}#s{seed}", "prompt": f"q{i}", "completion": f"{name} {i}", "system": name,
             "seed": seed, "scores": {"holistic.z": rng.gauss(shift, 1.0), "factuality.share_positive": rng.random(),
                                      "length_tokens": float(rng.randint(10, 40))}} for i in range(6)]


def _evaluated(args, tmp_path, rng, shift) -> dict:
    """What stage_eval hands write_results, from synthetic scored answers: aspect k's holistic mean is shift·k."""
    per = {"initial": [], **{a: [] for a in args.aspects}}
    for seed in args.seeds:
        per["initial"] += _scored("initial", seed, 0.0, rng)
        for k, a in enumerate(args.aspects):
            per[a] += _scored(a, seed, shift * k, rng)
    clusters = {r["prompt_id"]: r["prompt_id"].rsplit("#s", 1)[0] for r in per["initial"]}
    directions = dict.fromkeys(qa_ablation.METRICS, True)
    result, _, _ = qa_ablation.compare_scored(per, directions, tmp_path / "c1", metrics=list(qa_ablation.METRICS),
                                              clusters=clusters)
    variants = {k: v for k, v in per.items() if k != "initial"}
    table5, _, _ = qa_ablation.compare_scored(variants, directions, tmp_path / "c2",
                                              metrics=list(qa_ablation.WIN_METRICS), clusters=clusters)
    return {"result": result, "variants": table5, "judge": None, "steps": {}}


def test_the_table_holds_every_variant_with_intervals_beside_the_paper(tmp_path):
    args = _args(tmp_path)
    evaluated = _evaluated(args, tmp_path, random.Random(0), 0.5)  # length (k = 2) made the best by the holistic model
    selection = {"kept": ["factuality"], "aspects": {
        "factuality": {"conflict": 0.06, "n_conflicts": 6, "n_holistic_decisive": 100, "win_rate": None, "kept": True},
        "relevance": {"conflict": 0.3, "n_conflicts": 30, "n_holistic_decisive": 100, "win_rate": None, "kept": False}}}
    root = tmp_path / "runs"
    root.mkdir()
    data = qa_ablation.write_results(args, root, selection, evaluated)
    saved = json.loads((tmp_path / "out" / "qa_ablation.json").read_text())
    assert saved["seeds"] == [1, 2, 3] and saved["steps"] == 40 and saved["aspects"] == list(qa_ablation.ASPECTS)
    assert saved["eval_questions"] == 6 and saved["eval_units"] == 18
    hol = {a: data["table"][a]["avg_win_rate"]["holistic"] for a in args.aspects}
    for a, cell in hol.items():
        assert cell["pct_low"] <= cell["win_rate_pct"] <= cell["pct_high"], a
    assert max(hol, key=lambda a: hol[a]["win_rate_pct"]) == "length"
    assert data["table"]["length"]["selection"]["inconsistency"] is None  # not measured: no row, no number
    assert data["table"]["factuality"]["paper"]["holistic"] == 51.93
    md = (tmp_path / "out" / "qa_ablation.md").read_text()
    assert md.count("| factuality |") == 1 and "6.0 %" in md and "(initial policy)" in md
    cell = data["win_rate_matrices"]["holistic"]["cells"]["factuality"]["length"]
    assert f"| factuality vs length | {cell['win_rate_pct']:.1f} [" in md  # the head-to-head lines, each pair once
    pairs = [line for line in md.splitlines() if re.match(r"^\| (factuality|relevance|length) vs ", line)]
    assert len(pairs) == 3 and "| length vs factuality |" not in md


def test_runs_whose_answers_are_saved_are_not_trained_again(tmp_path, monkeypatch):
    args = _args(tmp_path)
    (tmp_path / "out").mkdir()
    rows = [{"system": "hierarchical-factuality-s1", "seed": 1, "prompt_id": "q0", "sample": 0, "completion": "a",
             "scores": {}, "steps": 40},
            {"system": "hierarchical-relevance-s1", "seed": 1, "prompt_id": "q0", "sample": 0, "completion": "b",
             "scores": {}, "steps": 12}]  # half-trained: not done
    (tmp_path / "out" / qa_ablation.ANSWERS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    trained = []
    monkeypatch.setattr(qa_ablation.qc, "run_settings", lambda *a: trained.append(a[3]) or (_ for _ in ()).throw(
        RuntimeError("stop")))
    assert qa_ablation.train_one(args, tmp_path / "runs", 1, "factuality") is False and trained == []
    import pytest

    with pytest.raises(RuntimeError, match="stop"):
        qa_ablation.train_one(args, tmp_path / "runs", 1, "relevance")
    assert trained == ["relevance"]


def test_answers_of_other_seeds_are_kept_when_a_run_writes_its_own():
    row = lambda system, seed, text: {"system": system, "seed": seed, "prompt_id": "q0", "sample": 0,  # noqa: E731
                                      "completion": text, "scores": {}, "steps": 40}
    saved = [row("initial", None, "i"), row("hierarchical-length-s1", 1, "old"), row("hierarchical-factuality-s1", 1, "f")]
    fresh = [row("initial", None, "i"), row("hierarchical-length-s4", 4, "new"), row("hierarchical-length-s1", 1, "redo")]
    merged = qa_ablation.merge_answers(saved, fresh)
    assert [(a["system"], a["completion"]) for a in merged] == [
        ("hierarchical-factuality-s1", "f"), ("hierarchical-length-s1", "redo"), ("hierarchical-length-s4", "new"),
        ("initial", "i")]


def test_a_replication_on_other_seeds_writes_its_own_report_and_times(tmp_path):
    args = _args(tmp_path, seeds=[4, 5, 6], report="qa_ablation_replication")
    evaluated = _evaluated(args, tmp_path, random.Random(1), 0.0)
    root = tmp_path / "runs"
    for name, wall in (("hierarchical-length-s1", "999.0"), ("hierarchical-length-s4", "60.0")):
        (root / name).mkdir(parents=True)
        (root / name / "wall_seconds.txt").write_text(wall)
    selection = {"kept": ["factuality"], "aspects": {}}
    qa_ablation.write_results(args, root, selection, evaluated)
    out = tmp_path / "out"
    assert not (out / "qa_ablation.json").exists()  # the main report is not overwritten
    saved = json.loads((out / "qa_ablation_replication.json").read_text())
    assert saved["seeds"] == [4, 5, 6] and saved["train_wall_seconds"] == {"hierarchical-length-s4": 60.0}
    assert (out / "qa_ablation_replication.md").exists()
