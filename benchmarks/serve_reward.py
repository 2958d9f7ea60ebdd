"""``alarm serve-reward`` under load: one-sample clients (OpenRLHF, verl's naive manager) against batches.

The server runs as its own process (``alarm serve-reward --config quickstart.yaml --state ...``: the
quickstart's MiniLM rewards, normalisers fitted on the packaged answers) and the clients are threads of
this process, each with its own HTTP connection. Measured: responses per second and request latency
(p50/p99) with 1, 8, 32 and 64 concurrent clients each sending one response per request, against one client
sending batches of 64; then the server's resident memory every 1 000 requests over 10 000 one-sample
requests from 64 clients (by default against a second server with rule-based rewards: the MiniLM rewards
score about 2 responses a second on this 2-core machine, so 10 000 of them would take over an hour; the
server's own code, whose memory this checks, is the same). The server merges concurrent requests into one scoring pass (``--max-batch 64``,
``--max-wait-ms 10``). The machine's load (``uptime``) is recorded beside the timings.

    .venv/bin/python benchmarks/serve_reward.py            # -> benchmarks/results/serve_reward.{json,md}
    .venv/bin/python benchmarks/serve_reward.py --smoke    # seconds: rule-based rewards, few requests
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET = 0.8  # 64 one-sample clients should reach this share of the batched throughput


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average (1 min) {common.load1():.2f}"


def workload(n: int) -> list[dict]:
    """n one-response requests from the packaged quickstart questions: the reference answer, a passage's
    first sentence, or a short non-answer, with the question, reference and passages as the label."""
    from alarm.data.qa import load_qa_jsonl

    recs = load_qa_jsonl(None)
    out = []
    for i in range(n):
        r = recs[i % len(recs)]
        kind = i % 3
        response = r.reference if kind == 0 else (r.passages[0].split(". ")[0] + "." if kind == 1 else "I am not sure.")
        out.append({"prompt": f"<|im_start|>user\n{r.question}<|im_end|>\n<|im_start|>assistant\n",
                    "response": response + "<|im_end|>",
                    "label": {"question": r.question, "reference": r.reference, "passages": list(r.passages)}})
    return out


def write_server_files(folder: Path, smoke: bool) -> tuple[Path, Path]:
    """A recipe and its fitted reward state, as `alarm serve-reward --config --state` reads them."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    from alarm.config import build_reward_set, load_recipe

    if smoke:  # no model: rule-based rewards
        recipe = {"name": "serve-smoke", "rewards": {"holistic": {"type": "length", "unit": "words"},
                                                     "aspects": {"chars": {"type": "length", "unit": "chars"}},
                                                     "normalize": ["holistic", "chars"]},
                  "combine": {"mode": "hierarchical", "epsilon": 0.0, "holistic_weight": 2.0}}
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
    else:
        import alarm

        path = Path(alarm.__file__).parent / "recipes" / "quickstart.yaml"
    rs = build_reward_set(load_recipe(path))
    fit = workload(48)
    cols = {k: [w["label"][k] for w in fit] for k in ("reference", "passages")}
    rs.fit([w["label"]["question"] for w in fit], [w["response"].removesuffix("<|im_end|>") for w in fit], **cols)
    state = folder / "reward_state.json"
    state.write_text(json.dumps(rs.state()))
    return path, state


class Server:
    def __init__(self, recipe: Path, state: Path, port: int, threads: int):
        import os

        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "alarm.cli", "serve-reward", "--config", str(recipe),
                                      "--state", str(state), "--port", str(port), "--max-batch", "64",
                                      "--max-wait-ms", "10", "--max-queue", "256"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import requests

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-reward exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise RuntimeError("serve-reward did not come up in 300 s")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def body(items: list[dict]) -> dict:
    return {"query": [w["prompt"] + w["response"] for w in items], "prompts": [w["prompt"] for w in items],
            "labels": [w["label"] for w in items]}


def run_clients(url: str, items: list[dict], clients: int, per_request: int, on_request=None) -> dict:
    """``clients`` threads share ``items`` (``per_request`` per request); each has its own connection."""
    import requests

    batches = [items[i:i + per_request] for i in range(0, len(items), per_request)]
    lock, latencies, errors = threading.Lock(), [], []
    nxt = iter(range(len(batches)))

    def client():
        session = requests.Session()
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t0 = time.perf_counter()
            r = session.post(url + "/get_reward", json=body(batches[i]), timeout=120)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if r.status_code != 200 or len(r.json()["rewards"]) != len(batches[i]):
                    errors.append(r.status_code)
                done = len(latencies)
            if on_request is not None:
                on_request(done)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {"clients": clients, "per_request": per_request, "requests": len(lat), "responses": len(items),
            "seconds": round(wall, 3), "responses_per_s": round(len(items) / wall, 2),
            "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1), "errors": len(errors)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="rule-based rewards and few requests: seconds")
    p.add_argument("--requests", type=int, default=128, help="one-sample requests per level of 8, 32, 64 clients")
    p.add_argument("--single-requests", type=int, default=16, help="requests of the one-client level")
    p.add_argument("--batches", type=int, default=2, help="batches of 64 sent by the batched client")
    p.add_argument("--memory-requests", type=int, default=10_000, help="requests of the memory run")
    p.add_argument("--memory-rewards", choices=["rules", "quickstart"], default="rules",
                   help="the rewards of the memory run's server (default: rule-based, fast)")
    p.add_argument("--port", type=int, default=5071)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    p.add_argument("--out", default=str(common.RESULTS))
    p.add_argument("--name", default="serve_reward")
    args = p.parse_args(argv)
    if args.smoke:
        args.requests, args.single_requests, args.batches, args.memory_requests = 32, 8, 1, 256
    n, n_mem = args.requests, args.memory_requests
    info = common.machine()
    load = {"uptime_at_start": uptime(), "load1_at_start": round(common.load1(), 2)}
    with tempfile.TemporaryDirectory() as tmp:
        recipe, state = write_server_files(Path(tmp) / "main", args.smoke)
        server = Server(recipe, state, args.port, args.threads)
        try:
            items = workload(max(n, 64 * args.batches, args.single_requests))
            run_clients(server.url, items[:16], 8, 1)  # warm-up: models loaded, first passes done
            rows = [run_clients(server.url, items[:64 * args.batches], 1, 64),
                    run_clients(server.url, items[:args.single_requests], 1, 1)]
            for c in (8, 32, 64):
                rows.append(run_clients(server.url, items[:n], c, 1))
        finally:
            server.close()
        load["uptime_after_throughput"] = uptime()
        rules = args.smoke or args.memory_rewards == "rules"
        recipe, state = write_server_files(Path(tmp) / "memory", rules)
        server = Server(recipe, state, args.port + 1, args.threads)
        try:
            mem = [{"requests": 0, "rss_mb": round(server.rss_mb(), 1)}]
            step = max(n_mem // 10, 1)

            def sample(done):
                if done % step == 0:
                    mem.append({"requests": done, "rss_mb": round(server.rss_mb(), 1)})

            mem_run = run_clients(server.url, workload(n_mem), 64, 1, on_request=sample)
        finally:
            server.close()
    load.update({"uptime_at_end": uptime(), "load1_at_end": round(common.load1(), 2)})
    batched = rows[0]["responses_per_s"]
    ratio = rows[-1]["responses_per_s"] / batched
    rss = [m["rss_mb"] for m in mem]
    after_first = [m["rss_mb"] for m in mem if m["requests"] >= step]
    data = {"machine": info, "load": load, "smoke": args.smoke,
            "rewards": "rule-based (smoke)" if args.smoke else "quickstart (MiniLM: reference similarity, "
                                                                "grounding, relevance)",
            "server": {"max_batch": 64, "max_wait_ms": 10, "torch_threads": args.threads},
            "rows": rows, "ratio_64_clients_to_batched": round(ratio, 3), "target": TARGET,
            "meets_target": ratio >= TARGET,
            "memory": {"rewards": "rule-based" if rules else "quickstart (MiniLM)", "samples": mem, "run": mem_run,
                                                        "growth_after_first_step_mb": round(
                                                            max(after_first) - min(after_first), 1)
                                                        if after_first else None}}
    table = common.md_table(
        ["clients", "responses per request", "responses/s", "p50 latency (ms)", "p99 latency (ms)", "errors"],
        [[r["clients"], r["per_request"], r["responses_per_s"], r["p50_ms"], r["p99_ms"], r["errors"]]
         for r in rows])
    smoke_line = "SMOKE RUN: rule-based rewards, few requests; the numbers mean nothing.\n" if args.smoke else ""
    md = f"""# alarm serve-reward: one-sample clients against batches

{smoke_line}Rewards: {data['rewards']}; the server in its own process with {args.threads} torch threads, merging concurrent
requests into scoring passes of up to 64 responses (waiting at most 10 ms). Clients: threads of the
benchmark process on the same machine, one HTTP connection each; every request carries the quickstart
question, its reference and passages, and a response ending in `<|im_end|>`.

{table}

64 one-sample clients reach {ratio:.2f}× the throughput of one client sending batches of 64 (target
≥ {TARGET}): {'met' if ratio >= TARGET else 'NOT met'}.

Memory (server RSS) over {n_mem} one-sample requests from 64 clients ({data['memory']['rewards']} rewards,
{mem_run['responses_per_s']} responses/s, {mem_run['errors']} errors): {rss[0]} MB before,
{', '.join(str(x) for x in rss[1:])} MB every {step} requests; spread after the first {step}:
{data['memory']['growth_after_first_step_mb']} MB.

{common.machine_line(info, load)}
uptime at start: `{load['uptime_at_start']}`; after the throughput runs: `{load['uptime_after_throughput']}`;
at end: `{load['uptime_at_end']}`.
"""
    common.write_results(args.name, data, md, *([args.out] if args.out != str(common.RESULTS) else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
