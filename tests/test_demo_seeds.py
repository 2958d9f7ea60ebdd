"""benchmarks/demo_seeds.py in its smoke mode: the real command per seed, its eval.json headline kept, resumable."""

import importlib.util
import json
from pathlib import Path

import pytest
import tiny

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_seeds.py"
_spec = importlib.util.spec_from_file_location("demo_seeds_bench", _PATH)
demo_seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_seeds)


@pytest.mark.slow
def test_each_seed_runs_the_demo_and_keeps_its_headline(tmp_path, minilm_dir):
    model = tmp_path / "tiny"
    tiny.causal_lm().save_pretrained(model)
    tiny.tokenizer().save_pretrained(model)
    argv = ["--seeds", "3", "--out", str(tmp_path / "out"), "--run-root", str(tmp_path / "runs"), "--smoke", str(model)]
    assert demo_seeds.main(argv) == 0
    data = json.loads((tmp_path / "out" / "demo_seeds.json").read_text())
    assert data["seeds"] == [3] and len(data["results"]) == 1
    r = data["results"][0]
    eval_json = json.loads((tmp_path / "runs" / "fresh" / "seed-3" / "eval.json").read_text())["headline"]
    assert r["paired_difference"] == {k: eval_json["paired_difference"][k] for k in ("mean", "low", "high")}
    assert r["paired_difference"]["low"] <= r["paired_difference"]["mean"] <= r["paired_difference"]["high"]
    assert r["wall_seconds"] > 0 and set(r) >= {"seed", "win_rate", "length_change", "length_controlled"}
    assert "| 3 |" in (tmp_path / "out" / "demo_seeds.md").read_text()
    # resumable: the seed is not run again (its run directory may be gone)
    (tmp_path / "runs" / "fresh" / "seed-3" / "eval.json").unlink()
    assert demo_seeds.main(argv) == 0
    assert json.loads((tmp_path / "out" / "demo_seeds.json").read_text())["results"] == data["results"]
