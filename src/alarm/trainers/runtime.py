"""What both training loops need around the math: the accelerator, the optimizer, the metrics log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from alarm.io import write_text_atomic


def is_fsdp2(module: torch.nn.Module) -> bool:
    """Whether ``module`` is sharded with FSDP2 (``fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(module, FSDPModule)


def make_accelerator(report_to: str, output_dir: str | os.PathLike):
    """An ``accelerate.Accelerator`` (one process, or what `accelerate launch` set up), logging to a tracker
    when ``report_to`` names one."""
    from accelerate import Accelerator

    return Accelerator(log_with=None if report_to == "none" else report_to, project_dir=str(output_dir))


def make_optimizer(module: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; weight_decay 0 is plain Adam, as the papers' trainers used."""
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=learning_rate,
                             weight_decay=weight_decay)


def log_metrics(accelerator, output_dir: Path, metrics: dict, report_to: str) -> None:
    """One line of ``metrics.jsonl`` (main process) and the tracker, if any."""
    if accelerator.is_main_process:
        with open(output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
    if report_to != "none":
        accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=metrics["step"])


def cut_metrics(output_dir: Path, step: int) -> int:
    """Keep only ``metrics.jsonl`` lines up to ``step`` (the checkpoint resumed from): a kill between a step's
    metrics line and its checkpoint, or in the middle of a line, must not leave that step twice. Returns the
    number of lines dropped."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # half a line: the kill came while it was written
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(kept))
    return dropped


def tracker_kwargs(report_to: str, step: int) -> dict:
    """Tracker options for a run resumed at ``step``: TensorBoard drops the events after it (purge_step)."""
    if report_to == "tensorboard" and step:
        return {"tensorboard": {"purge_step": step + 1}}
    return {}
