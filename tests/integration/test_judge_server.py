"""The judge against a real OpenAI-compatible server: llama.cpp (llama-cpp-python[server]) serving the offline
SmolLM2-135M-Instruct GGUF on 127.0.0.1. Run with ``make test-integration`` (``pytest tests/integration -m
integration``). Skipped when llama_cpp is not installed.

It checks, on real replies: both orders are asked and combined (a win only when both agree), every verdict is
what the parser reads from the last reply (earlier replies of a judgment did not parse, which is why it was
re-asked), unreadable judgments become ties and are logged, and a rerun is served from the cache. It prints
server start time and seconds per judgment.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from alarm.evaluation.judge import Judge, JudgeConfig, combine_orders, parse_verdict, summarize_outcomes

pytestmark = pytest.mark.integration

if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
    pytest.skip("llama-cpp-python[server] is not installed (make test-integration installs it)", allow_module_level=True)

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "France is a country in Europe with many cities."),
    ("At what temperature does water boil at sea level?", "Bananas are yellow.", "Water boils at 100 degrees Celsius at sea level."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet.", "It was written by Charles Dickens."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have eight legs."),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from alarm.models import smollm2_gguf_path

    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama.cpp server not ready after 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        print(f"\n[llama.cpp] server ready in {time.perf_counter() - started:.1f} s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_bookkeeping(judge: Judge, outcomes, failures_path) -> dict:
    """Invariants every judged pair must satisfy, whatever the model said."""
    for o in outcomes:
        assert o.first.key != o.second.key  # the two orders are different requests
        assert o.outcome == combine_orders(o.first.verdict, o.second.verdict)
        for j in (o.first, o.second):
            assert j.verdict == parse_verdict(j.replies[-1])
            assert all(parse_verdict(r) is None for r in j.replies[:-1])  # re-asked only when unreadable
            assert 1 <= len(j.replies) <= judge.config.parse_retries + 1
            if j.verdict is None:
                assert len(j.replies) == judge.config.parse_retries + 1
                assert o.outcome == "tie"
    judgments = [j for o in outcomes for j in (o.first, o.second)]
    assert judge.requests_made == sum(len(j.replies) for j in judgments)
    unparsed = [j for j in judgments if j.verdict is None]
    assert judge.unparsed == len(unparsed)
    logged = failures_path.read_text().splitlines() if failures_path.exists() else []
    assert sorted(json.loads(line)["key"] for line in logged) == sorted(j.key for j in unparsed)
    return summarize_outcomes(outcomes)


def test_real_judge_both_orders_parse_retry_and_cache(server, tmp_path):
    cfg = JudgeConfig(base_url=server, model="smollm2", max_tokens=64, concurrency=2, parse_retries=1,
                      cache_path=str(tmp_path / "cache.jsonl"), failures_path=str(tmp_path / "unparsed.jsonl"))
    judge = Judge(cfg)
    t0 = time.perf_counter()
    outcomes = judge.judge_many(PAIRS)
    elapsed = time.perf_counter() - t0
    summary = check_bookkeeping(judge, outcomes, tmp_path / "unparsed.jsonl")
    print(f"\n[llama.cpp] {len(PAIRS)} pairs, {summary['verdicts']} judgments, {judge.requests_made} requests in "
          f"{elapsed:.1f} s ({elapsed / judge.requests_made:.2f} s/request, {elapsed / summary['verdicts']:.2f} s/judgment); "
          f"parsed {summary['verdicts_parsed']}/{summary['verdicts']}; outcomes {[o.outcome for o in outcomes]}; "
          f"ties by reason {summary['ties_by_reason']}")
    assert summary["pairs"] == len(PAIRS) and summary["wins"] + summary["losses"] + summary["ties"] == len(PAIRS)

    # A rerun pays only for what did not parse: parsed verdicts come from the cache, unparsed ones are asked again.
    unparsed = sum(j.verdict is None for o in outcomes for j in (o.first, o.second))
    again = Judge(cfg)
    second = again.judge_many(PAIRS)
    assert unparsed <= again.requests_made <= (cfg.parse_retries + 1) * unparsed
    assert [o.outcome for o in second] == [o.outcome for o in outcomes]


def test_real_unreadable_replies_become_logged_ties(server, tmp_path):
    """With room for one token a reply rarely holds a verdict: the re-ask and tie path run on real replies."""
    cfg = JudgeConfig(base_url=server, model="smollm2", max_tokens=1, concurrency=2, parse_retries=1,
                      failures_path=str(tmp_path / "unparsed.jsonl"))
    judge = Judge(cfg)
    outcomes = judge.judge_many(PAIRS)
    summary = check_bookkeeping(judge, outcomes, tmp_path / "unparsed.jsonl")
    print(f"\n[llama.cpp] max_tokens=1: parsed {summary['verdicts_parsed']}/{summary['verdicts']}, "
          f"{judge.requests_made} requests, replies {sorted({r for o in outcomes for j in (o.first, o.second) for r in j.replies})}")
    assert judge.unparsed >= 1  # the path under test actually ran
