"""The research studies' smoke modes (experiments/*.py --smoke): every stage on a tiny saved policy and few
prompts, so a moved or renamed library function breaks a test, not the next week-long run. Minutes of CPU in
all (the MiniLM rewards and several tiny training runs each): marked slow."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import tiny

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "qa_feedback"
needs_shared = pytest.mark.skipif(not (SHARED / "feedback.json").exists(), reason=f"no QA-Feedback subset at {SHARED}")
pytestmark = pytest.mark.slow


def experiment(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> str:
    """A tiny random Llama and the tests' byte-level tokenizer, saved as a model directory."""
    out = tmp_path_factory.mktemp("tiny-policy")
    model = tiny.causal_lm(0)
    model.config.max_position_embeddings = 2048  # byte-level pieces: prompts with passages are long
    model.save_pretrained(out)
    tiny.tokenizer().save_pretrained(out)
    return str(out)


def test_vcb_study_runs_every_stage(tiny_policy, tmp_path, minilm_dir):
    experiment("vcb_study").main(["--smoke", tiny_policy, "--run-dir", str(tmp_path / "runs"),
                                  "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "vcb_study.json").read_text())
    assert set(result["knobs"]) == {"lr=1e-3", "dpo@lr=1e-3"}
    assert result["systems"] == ["vcb", "sft", "dpo", "ipo", "slic", "rrhf", "ppo"]
    assert all(result["vcb_vs"][s]["wins"] + result["vcb_vs"][s]["ties"] + result["vcb_vs"][s]["losses"] == 2
               for s in result["systems"] if s != "vcb")  # 2 held-out prompts × 1 seed
    assert "| ppo |" in (tmp_path / "out" / "vcb_study.md").read_text()


@needs_shared
def test_qa_compare_selects_and_trains_every_mode(tiny_policy, tmp_path):
    """Selection and training; the evaluation's tables need the evidence models' span scores and are tested
    from saved answers (test_experiment_qa_compare.py)."""
    qa = experiment("qa_compare")
    qa.main(["--smoke", tiny_policy, "--stage", "train", "--run-dir", str(tmp_path / "runs"),
             "--out", str(tmp_path / "out")])
    selection = json.loads((tmp_path / "out" / "qa_selection.json").read_text())
    assert selection["pairs"] == 4 and set(selection["selection"]["aspects"]) == {"factuality", "relevance", "length"}
    for mode in qa.MODES:
        metrics = (tmp_path / "runs" / f"{mode}-s1" / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 1, mode  # one PPO step each


@needs_shared
def test_rm_cv_cross_validates_a_reward_model(tmp_path, minilm_dir):
    experiment("rm_cv").main(["--smoke", "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "rm_cv.json").read_text())
    assert list(result) == ["holistic_evidence"]
    assert 0.0 <= result["holistic_evidence"]["metrics"]["pairwise_accuracy"]["mean"] <= 1.0
