"""Shared pieces of the benchmarks: the machine, a quiet-machine gate, the workload, result files, smoke mode.

Every benchmark records the machine (CPU model, cores, torch threads) and the 1-minute load average before
and after it ran: numbers taken on a busy machine are worthless, so ``wait_until_quiet`` blocks until the
load average drops below a limit (or gives up after a while and records that it did).

Smoke mode (``--smoke`` on every benchmark, ``smoke(True)`` here): the policy is a tiny random Llama with the
tests' byte-level tokenizer (``tests/tiny.py``), nothing waits for a quiet machine and every loop runs once, so
the whole script runs in seconds and the test suite runs it (``tests/test_benchmarks.py``): a function that
moved breaks a test, not the next measurement. Its numbers mean nothing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Offline and quiet: no hub calls or telemetry threads during timing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2
SMOKE = False  # tiny random models instead of SmolLM2 (set by each script's --smoke)


def smoke(on: bool) -> bool:
    global SMOKE
    SMOKE = on
    return on


def tests_on_path() -> None:
    """tests/ importable: the fault-injection harness (faults.py) and the smoke mode's tiny models (tiny.py)."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def common_args(p, name: str, threads: int = THREADS):
    """The options every benchmark takes: --smoke, --out, --name, --threads, --max-load, --max-wait."""
    p.add_argument("--smoke", action="store_true", help="tiny random models, seconds: that the script runs")
    p.add_argument("--out", default=str(RESULTS), help="folder of the results files (default benchmarks/results)")
    p.add_argument("--name", default=name, help="results file stem")
    p.add_argument("--threads", type=int, default=threads, help="torch threads")
    p.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-minute load average is below this")
    p.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for a quiet machine, then run anyway")
    return p


def start(args) -> dict:
    """Smoke mode on or off, torch threads set, and the load at the start (after waiting for quiet, unless
    smoke or ``--max-wait 0``)."""
    smoke(args.smoke)
    set_threads(args.threads)
    if args.smoke or args.max_wait <= 0:
        return {"load1_at_start": round(load1(), 2), "waited_s": 0, "busiest_at_start": top_processes(5)}
    return wait_until_quiet(args.max_load, args.max_wait)


def set_threads(n: int = THREADS) -> int:
    import torch

    torch.set_num_threads(n)
    return torch.get_num_threads()


def load1() -> float:
    return os.getloadavg()[0]


def top_processes(n: int = 5) -> list[str]:
    out = subprocess.run(["ps", "aux", "--sort=-%cpu"], capture_output=True, text=True).stdout.splitlines()
    return [" ".join(line.split()[:3] + line.split()[10:])[:120] for line in out[1 : n + 1]]


def wait_until_quiet(limit: float = 1.5, max_wait: float = 1800, poll: float = 60, log=print) -> dict:
    """Block until the 1-min load average is below ``limit``; returns what was seen (for the result file)."""
    t0 = time.time()
    while load1() >= limit and time.time() - t0 < max_wait:
        log(f"[bench] load {load1():.2f} >= {limit}: waiting {poll:.0f}s; busiest: {top_processes(3)}")
        time.sleep(poll)
    return {"load1_at_start": round(load1(), 2), "waited_s": round(time.time() - t0, 1),
            "quiet": load1() < limit, "busiest_at_start": top_processes(5)}


def machine() -> dict:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "memory_gb": mem_gb, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), **versions}


def summary(xs: list[float]) -> dict:
    xs = list(xs)
    if not xs:
        return {"n": 0}
    def sig(x):  # 4 significant digits: keeps microsecond timings of cheap rewards non-zero
        return float(f"{x:.4g}")

    return {"n": len(xs), "median": sig(statistics.median(xs)), "min": sig(min(xs)), "max": sig(max(xs)),
            "all": [sig(x) for x in xs]}


def write_results(name: str, data: dict, markdown: str, out: str | Path = RESULTS) -> tuple[Path, Path]:
    """<out>/<name>.json and .md (out: benchmarks/results unless a script's --out says otherwise), and the
    tables printed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / f"{name}.json", out / f"{name}.md"
    j.write_text(json.dumps(data, indent=2, default=str) + "\n")
    m.write_text(markdown.rstrip() + "\n")
    print(markdown)
    print("wrote", j, m)
    return j, m


def machine_line(info: dict, load: dict) -> str:
    return (f"Machine: {info['cpu']}, {info['logical_cores']} logical cores, {info['memory_gb']} GB; "
            f"torch {info['torch']} with {info['torch_threads']} threads; load average (1 min) "
            f"{load.get('load1_at_start')} at start, {load.get('load1_at_end')} at end.")


# ------------------------------------------------------------------------------------------------ workload


def quickstart_records(tokenizer, split: str = "train") -> list[dict]:
    """The quickstart QA records as PPO prompt records (the same columns `alarm quickstart` gives PPO)."""
    from alarm.data.qa import format_prompt, load_qa_jsonl, split_records

    return [{"prompt": format_prompt(tokenizer, r.question, r.passages), "question": r.question,
             "passages": list(r.passages), "reference": r.reference}
            for r in split_records(load_qa_jsonl(None), split)]


def policy_and_tokenizer(name: str = "smollm2-135m-instruct"):
    """The benchmarked policy and its tokenizer: SmolLM2-135M-Instruct (through alarm.models.load_policy), or in
    smoke mode a tiny random 4-layer Llama."""
    if SMOKE:
        tests_on_path()
        import tiny

        model = tiny.causal_lm(0, layers=4)
        model.config.max_position_embeddings = 2048  # byte-level pieces: a quickstart prompt is ~330 of them
        return model, tiny.tokenizer()
    from alarm.models import load_policy

    return load_policy(name)


def load_tokenizer(name: str = "smollm2-135m-instruct"):
    """The policy's tokenizer alone (the tests' tiny one in smoke mode)."""
    if SMOKE:
        tests_on_path()
        import tiny

        return tiny.tokenizer()
    from alarm.models import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path(name))


def top_layers(model, n: int) -> list[int] | None:
    """The indices of the model's top ``n`` decoder layers (None for 0: every layer)."""
    if not n:
        return None
    total = model.config.num_hidden_layers
    if n > total:
        raise SystemExit(f"--lora-top {n}: the model has {total} layers")
    return list(range(total - n, total))


def suite_row(benchmark: str, measure: str, value, unit: str = "", baseline=None, ratio=None,
              target: str = "", met: bool | None = None) -> dict:
    """One row of the suite's table (benchmarks/__main__.py): what was measured, its value, what it is compared
    with, the ratio, the target and whether it was met."""
    return {"benchmark": benchmark, "measure": measure, "value": value, "unit": unit, "baseline": baseline,
            "ratio": ratio, "target": target, "met": met}


def force_length(model, n: int) -> None:
    """Make every sampled completion exactly ``n`` tokens: EOS is suppressed until n tokens exist."""
    model.generation_config.min_new_tokens = n
    model.generation_config.max_new_tokens = n


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
