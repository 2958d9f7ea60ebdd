"""Shared pieces of the benchmarks: the machine, a quiet-machine gate, the workload, result files.

Every benchmark records the machine (CPU model, cores, torch threads) and the 1-minute load average before
and after it ran: numbers taken on a busy machine are worthless, so ``wait_until_quiet`` blocks until the
load average drops below a limit (or gives up after a while and records that it did).
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


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """results/<name>.json and .md, and the tables printed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    j, m = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
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


def load_policy(name: str = "smollm2-135m-instruct"):
    from alarm.models import load_causal_lm, load_tokenizer, resolve_model_path

    path = resolve_model_path(name)
    return load_causal_lm(path), load_tokenizer(path)


def force_length(model, n: int) -> None:
    """Make every sampled completion exactly ``n`` tokens: EOS is suppressed until n tokens exist."""
    model.generation_config.min_new_tokens = n
    model.generation_config.max_new_tokens = n


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
