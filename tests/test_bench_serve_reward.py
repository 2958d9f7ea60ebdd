"""benchmarks/serve_reward.py --smoke: the script runs end to end (rule-based rewards, a few hundred requests)."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_reward_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("serve_reward", None)
    import serve_reward

    port = free_port()
    assert serve_reward.main(["--smoke", "--out", str(tmp_path), "--port", str(port)]) == 0
    data = json.loads((tmp_path / "serve_reward.json").read_text())
    rows = data["rows"]
    assert [(r["clients"], r["per_request"]) for r in rows] == [(1, 64), (1, 1), (8, 1), (32, 1), (64, 1)]
    assert all(r["errors"] == 0 and r["responses_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rows)
    assert data["memory"]["run"]["requests"] == 256 and len(data["memory"]["samples"]) == 11
    assert "load average" in data["load"]["uptime_at_start"]
    md = (tmp_path / "serve_reward.md").read_text()
    assert "SMOKE RUN" in md and "| 64 | 1 |" in md
