"""Fault injection for the trainers: run a tiny seeded training in a forked child, SIGKILL it at a chosen moment,
resume it in a fresh child, and compare with the uninterrupted run (used by tests/test_fault_injection.py and
benchmarks/fault_injection.py).

A *moment* is the n-th call of a hooked function in the child: the start of a step, right after a metrics line
was written (before its checkpoint), and each file write or rename inside a checkpoint save. Killing at a
counted call is seeded and repeatable, unlike a timer.
"""

from __future__ import annotations

import json
import os
import random
import signal
import traceback
from pathlib import Path

import tiny
import torch

from alarm import checkpoints
from alarm.combine import CombineConfig, RewardSet
from alarm.trainers import ppo as ppo_mod
from alarm.trainers import vcb as vcb_mod

PROMPTS = [{"prompt": p} for p in ["The quick", "Paris is", "Water boils", "A question", "The answer", "Café"]]


def _e_rate(prompts, completions, **kw):
    return [c.count("e") / (1 + len(c)) for c in completions]


def _nonempty(prompts, completions, **kw):
    return [float(len(c) > 3) for c in completions]


def ppo_trainer(run_dir: Path, steps: int = 3, **cfg):
    rs = RewardSet(CombineConfig(mode="hierarchical"), holistic=_e_rate, aspects={"long": _nonempty})
    rs.fit(["a"] * 4, ["eee", "abc", "hello there", "x"])
    base = dict(max_new_tokens=6, rollout_batch_size=3, mini_batch_size=2, grad_accum_steps=1, steps=steps,
                learning_rate=1e-3, save_every=1, ppo_epochs=1)
    return ppo_mod.PPOTrainer(ppo_mod.PPOConfig(**{**base, **cfg}), tiny.causal_lm(), tiny.tokenizer(), rs,
                              PROMPTS, run_dir)


def vcb_rows(n_prompts=3, n=4):
    words = ["the quick", "brown fox", "Paris is", "capital", "water boils", "answer"]
    rng = random.Random(0)
    return [{"prompt_id": f"p{p}", "split": "train" if p < n_prompts - 1 else "test",
             "prompt": f"Question {p}: {words[p % 6]}?", "candidate": " ".join(rng.sample(words, 2)),
             "reward": float(c + 0.5 * p)} for p in range(n_prompts) for c in range(n)]


def vcb_trainer(run_dir: Path, steps: int = 3, **cfg):
    base = dict(loss="vcb", lora=True, batch_size=2, micro_batch_size=2, max_steps=steps, eval_greedy=False,
                learning_rate=1e-2, save_every=1, eval_every=2)
    return vcb_mod.VCBTrainer(vcb_mod.VCBConfig(**{**base, **cfg}), tiny.causal_lm(), tiny.tokenizer(),
                              vcb_rows(), run_dir)


TRAINERS = {"ppo": ppo_trainer, "vcb": vcb_trainer}


def _install_hooks(tick) -> None:
    """Count (and possibly die at) each moment; only ever called inside a forked child."""
    import safetensors.torch

    def wrap(owner, name, label):
        original = getattr(owner, name)

        def hooked(*a, **k):
            tick(label)
            out = original(*a, **k)
            if label == "metrics":
                tick("after-metrics")  # the window between a step's metrics line and its checkpoint
            return out

        setattr(owner, name, hooked)

    wrap(ppo_mod, "log_metrics", "metrics")
    wrap(vcb_mod, "log_metrics", "metrics")
    wrap(ppo_mod.PPOTrainer, "step", "step")
    wrap(vcb_mod.VCBTrainer, "step", "step")
    wrap(checkpoints, "write_manifest", "ckpt:manifest")
    wrap(checkpoints.torch, "save", "ckpt:torch.save")
    wrap(safetensors.torch, "save_file", "ckpt:safetensors")
    wrap(checkpoints.os, "replace", "ckpt:rename")


def _child(kind: str, run_dir: Path, kill_at: int | None, resume: bool, steps: int) -> None:
    torch.set_num_threads(1)
    save = torch.save
    events: list[str] = []

    def tick(label):
        events.append(label)
        if kill_at is not None and len(events) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    _install_hooks(tick)
    tr = TRAINERS[kind](run_dir, steps=steps)
    if resume:
        tr.resume()
    tr.train(progress=False)
    params = {k: v.detach().clone() for k, v in tr.unwrapped.named_parameters() if v.requires_grad}
    save(params, run_dir / "final_params.pt")
    (run_dir / "events.json").write_text(json.dumps(events))


def run_child(kind: str, run_dir: Path, kill_at: int | None = None, resume: bool = False, steps: int = 3) -> str:
    """Fork a child that trains (resuming first if asked); 'killed', 'done' or 'failed: ...'."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _child(kind, run_dir, kill_at, resume, steps)
        except BaseException:
            (run_dir / "child_error.txt").write_text(traceback.format_exc())
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return "done"
    err = run_dir / "child_error.txt"
    return "failed: " + (err.read_text() if err.exists() else f"status {status}")


def metrics(run_dir: Path) -> list[dict]:
    """The metrics log without wall-clock timings (the only values that may differ between runs)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in lines]


def kill_moments(events: list[str], n: int, seed: int) -> list[int]:
    """``n`` seeded event numbers (1-based), always including one inside a checkpoint write and one between a
    metrics line and its checkpoint."""
    rng = random.Random(seed)
    must = [rng.choice([i for i, e in enumerate(events, 1) if e == label])
            for label in ("ckpt:torch.save", "after-metrics")]
    rest = rng.sample([i for i in range(1, len(events) + 1) if i not in must], n - len(must))
    return sorted(must + rest)


def campaign(kind: str, root: Path, n: int = 10, seed: int = 0, steps: int = 3) -> dict:
    """The uninterrupted run, then ``n`` runs each killed at one seeded moment and resumed to the end."""
    warm = TRAINERS[kind](root / "warm-up", steps=1)  # imports and lazy set-up once, before the forks
    warm.train(progress=False)
    warm.resume()
    ref_dir = root / "reference"
    status = run_child(kind, ref_dir, steps=steps)
    assert status == "done", status
    events = json.loads((ref_dir / "events.json").read_text())
    ref_metrics, ref_params = metrics(ref_dir), torch.load(ref_dir / "final_params.pt")
    results = []
    for k in kill_moments(events, n, seed):
        run_dir = root / f"kill-{k:03d}"
        first = run_child(kind, run_dir, kill_at=k, steps=steps)
        second = run_child(kind, run_dir, resume=True, steps=steps)
        same_metrics = second == "done" and metrics(run_dir) == ref_metrics
        same_params = second == "done" and _equal(torch.load(run_dir / "final_params.pt"), ref_params)
        results.append({"kill_at": k, "moment": events[k - 1], "first": first, "resumed": second[:400],
                        "metrics_identical": same_metrics, "params_identical": same_params})
    identical = sum(r["first"] == "killed" and r["metrics_identical"] and r["params_identical"] for r in results)
    return {"kind": kind, "steps": steps, "events": len(events), "runs": len(results), "identical": identical,
            "results": results}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
