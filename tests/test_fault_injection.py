"""SIGKILL a tiny seeded PPO / VCB run at 10 seeded moments (mid-step, between a metrics line and its checkpoint,
inside a checkpoint write), resume it each time: metrics and final parameters equal the uninterrupted run's."""

from __future__ import annotations

import sys

import faults
import pytest
import torch

pytestmark = [pytest.mark.fault_injection,
              pytest.mark.skipif(sys.platform != "linux", reason="forks and SIGKILLs a child: Linux only")]


@pytest.mark.parametrize("kind", ["ppo", "vcb"])
def test_every_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path, kind, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = faults.campaign(kind, tmp_path, n=10, seed=18)
    finally:
        torch.set_num_threads(threads)
    moments = {r["moment"] for r in report["results"]}
    assert {"ckpt:torch.save", "after-metrics"} <= moments
    assert all(r["first"] == "killed" for r in report["results"]), report["results"]
    assert report["identical"] == report["runs"] == 10, report["results"]
