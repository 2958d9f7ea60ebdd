"""Every benchmark's smoke mode (tiny random models, seconds), so a moved or renamed function breaks a test and
not the next measurement: the suite (`python -m benchmarks --smoke`) runs them all and builds its table."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import __main__ as suite
from benchmarks import common, step_time


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # the benchmarks set their own
    common.smoke(False)


ALL_BUT_FAULTS = [n for n in suite.BENCHMARKS if n != "fault_injection"]


def test_the_suite_runs_every_benchmark_and_keeps_one_table(tmp_path, threads):
    assert suite.main(["--smoke", "--out", str(tmp_path), "--only", ",".join(ALL_BUT_FAULTS)]) == 0
    table = json.loads((tmp_path / "suite.json").read_text())
    assert list(table["benchmarks"]) == ALL_BUT_FAULTS
    measures = [r["measure"] for b in table["benchmarks"].values() for r in b["rows"]]
    for what in ("PPO step vs TRL GRPO step, LoRA on every layer",
                 "PPO step vs TRL GRPO step, LoRA on the top 2 layers (2–3)",
                 "rollout (sampling + rewards + reference pass) vs plain generate, LoRA on every layer",
                 "rewards' share of a step (decode + rewards + combination), LoRA on every layer",
                 "PPO step, frozen trunk replayed vs recomputed, LoRA on layers 2–3",
                 "VCB step, frozen trunk replayed vs recomputed, LoRA on layers 2–3"):
        assert what in measures
    top = json.loads((tmp_path / "step_time_top10.json").read_text())
    assert top["settings"]["lora_layers"] == [2, 3] and top["settings"]["trl"]["layers_to_transform"] == [2, 3]
    gaps = json.loads((tmp_path / "frozen_trunk.json").read_text())["max_abs_loss_gap"]
    assert max(gaps.values()) < 1e-4  # the replay is exact up to float rounding
    md = (tmp_path / "suite.md").read_text()
    assert "| PPO step vs TRL GRPO step, LoRA on every layer |" in md and "`uptime` before" in md

    # a second run of some benchmarks replaces their rows and keeps the others'
    assert suite.main(["--smoke", "--out", str(tmp_path), "--only", "memory"]) == 0
    again = json.loads((tmp_path / "suite.json").read_text())
    assert list(again["benchmarks"]) == ALL_BUT_FAULTS and len(again["runs"]) == 2
    assert again["benchmarks"]["step_time"] == table["benchmarks"]["step_time"]
    # and --collect builds the rows from what a benchmark wrote, running nothing
    assert suite.main(["--smoke", "--out", str(tmp_path), "--only", "step_time", "--collect"]) == 0
    collected = json.loads((tmp_path / "suite.json").read_text())
    assert collected["benchmarks"]["step_time"]["rows"] == table["benchmarks"]["step_time"]["rows"]
    assert collected["runs"][-1]["mode"] == "collected"


@pytest.mark.fault_injection
def test_the_fault_injection_benchmark_in_the_suite(tmp_path, threads):
    assert suite.main(["--smoke", "--out", str(tmp_path), "--only", "fault_injection"]) == 0
    rows = json.loads((tmp_path / "suite.json").read_text())["benchmarks"]["fault_injection"]["rows"]
    assert [r["met"] for r in rows] == [True, True]  # every killed run resumed to the uninterrupted one


def test_the_suite_refuses_an_unknown_benchmark(capsys):
    with pytest.raises(SystemExit) as e:
        suite.main(["--smoke", "--only", "step_tme"])
    assert e.value.code == 2 and "unknown benchmark(s) ['step_tme']" in capsys.readouterr().err


def test_the_step_benchmarks_reward_set_is_the_quickstarts(minilm_dir):
    common.smoke(True)
    try:
        records = common.quickstart_records(common.load_tokenizer())
    finally:
        common.smoke(False)
    rs = step_time.hierarchical_reward_set(records)
    assert rs.config.mode == "hierarchical" and len(rs.aspects) == 2 and rs.holistic is not None
    rewards, _ = rs.sequence_rewards([r["question"] for r in records[:2]], [r["reference"] for r in records[:2]],
                                     passages=[r["passages"] for r in records[:2]],
                                     reference=[r["reference"] for r in records[:2]])
    assert len(rewards) == 2 and all(map(torch.isfinite, torch.as_tensor(rewards)))


def test_gpu_check_runs_its_cpu_fallback_on_a_tiny_model(tmp_path, threads):
    from benchmarks import gpu_check

    shape = dict(gpu_check.SHAPE)
    try:
        assert gpu_check.main(["--smoke", "--skip", "trl", "--out", str(tmp_path)]) == 0
    finally:
        gpu_check.SHAPE.update(shape)
    res = json.loads((tmp_path / "smoke.json").read_text())
    assert {k: res[k]["status"] for k in ("device_tests", "ppo_bf16", "demo_gpu", "step_time")} == {
        "device_tests": "skipped", "ppo_bf16": "ok", "demo_gpu": "ok", "step_time": "skipped"}


@pytest.mark.parametrize("script", ["fault_injection", "frozen_trunk", "memory", "rewards", "step_time"])
def test_each_benchmark_runs_as_a_script_beside_pysbds_benchmarks_package(script):
    """`python benchmarks/<script>.py` (as the docs write it) imports this repository's `benchmarks` package, not
    the top-level `benchmarks` that pysbd installs into site-packages (it shadowed ours: ImportError)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / f"{script}.py"), "--help"], cwd=root / "tests",
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert "usage:" in done.stdout
