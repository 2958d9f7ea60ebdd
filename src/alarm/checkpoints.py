"""Training checkpoints shared by the PPO and VCB trainers: written atomically, resumed exactly.

Layout of ``<output_dir>/checkpoints/step-NNNNNN/``: ``model/`` (LoRA adapter or full model, safetensors),
extra safetensors files (e.g. the value head), ``optimizer.pt``, ``trainer_state.json`` and one
``rng_<rank>.pt`` per process. Everything is written to a hidden temporary directory and renamed into place,
so an interrupted save never looks like a finished checkpoint; ``checkpoints/latest`` names the newest one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from alarm.errors import AlarmError


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, model, optimizer, state: dict,
                    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
                    model_state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint of ``model`` (a PEFT or transformers model), the optimizer, ``state`` and RNGs."""
    from safetensors.torch import save_file

    root = Path(output_dir) / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp / "model", safe_serialization=True,
                              **({"state_dict": model_state_dict} if model_state_dict is not None else {}))
        for name, weights in (tensors or {}).items():
            save_file({k: v.contiguous() for k, v in weights.items()}, tmp / f"{name}.safetensors")
        if model_state_dict is None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    accelerator.wait_for_everyone()
    if model_state_dict is not None:  # FSDP: each rank holds its own shard of the optimizer state
        torch.save(optimizer.state_dict(), tmp / f"optimizer_{accelerator.process_index}.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(rng, tmp / f"rng_{accelerator.process_index}.pt")  # every rank keeps its own RNG stream
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (root / "latest").write_text(final.name)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    pointer = Path(output_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.exists() else None


def read_state(ckpt: Path) -> dict:
    if not (ckpt / "trainer_state.json").exists():
        raise AlarmError(f"{ckpt} is not a finished checkpoint (no trainer_state.json); pick another")
    return json.loads((ckpt / "trainer_state.json").read_text())


def load_checkpoint(ckpt: Path, model, optimizer, lora: bool, rank: int) -> None:
    """Restore model weights (adapter or full), optimizer state and this rank's RNG streams."""
    from safetensors.torch import load_file

    if lora:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(str(ckpt / "model")))
    else:
        model.load_state_dict(load_file(str(ckpt / "model" / "model.safetensors")), strict=False)
    if not (ckpt / "optimizer.pt").exists() and (ckpt / f"optimizer_{rank}.pt").exists():
        raise AlarmError(f"{ckpt} was written under FSDP (one optimizer shard per rank); resuming an FSDP run is "
                         "not supported yet: start a new run, or train without FSDP to resume")
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    rng_file = ckpt / f"rng_{rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])


def restore(output_dir: str | os.PathLike, path: str | os.PathLike | None, model, optimizer, rank: int,
            expected: dict) -> dict | None:
    """Load the given (or the latest) checkpoint of ``output_dir`` into ``model`` and ``optimizer``; returns its
    trainer state, or None when there is none. ``expected`` settings (e.g. ``lora``) must match the state's."""
    ckpt = Path(path) if path else latest_checkpoint(output_dir)
    if ckpt is None:
        return None
    state = read_state(ckpt)
    differ = {k: state.get(k) for k, v in expected.items() if state.get(k) != v}
    if differ:
        raise AlarmError(f"checkpoint {ckpt} was trained with {', '.join(f'{k}={v}' for k, v in differ.items())}; "
                         "use the same settings or a new output directory")
    load_checkpoint(ckpt, model, optimizer, bool(state["lora"]), rank)
    return {**state, "path": str(ckpt)}
