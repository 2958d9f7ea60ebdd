"""Training checkpoints shared by the PPO and VCB trainers: written atomically, resumed exactly.

Layout of ``<output_dir>/checkpoints/step-NNNNNN/``: ``model/`` (LoRA adapter or full model, safetensors),
extra safetensors files (e.g. the value head), ``optimizer.pt``, ``trainer_state.json`` and one
``rng_<rank>.pt`` per process. Everything is written to a hidden temporary directory and renamed into place,
so an interrupted save never looks like a finished checkpoint; ``checkpoints/latest`` names the newest one.
``manifest.json`` (every file's size and sha256) is written last: a checkpoint whose files do not match it
(a truncated or damaged file) is skipped on resume in favour of the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from alarm.errors import AlarmError
from alarm.io import write_text_atomic

MANIFEST = "manifest.json"


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
    name, keys, pos, has_gauss, cached = np.random.get_state()  # plain values: read back with weights_only
    rng = {"python": random.getstate(), "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
           "torch": torch.get_rng_state()}
    torch.save(rng, tmp / f"rng_{accelerator.process_index}.pt")  # every rank keeps its own RNG stream
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(root / "latest", final.name)
    accelerator.wait_for_everyone()
    return final


# A crash costs at most the step in progress: the newest step is saved whenever the last save took at most
# FREE_SAVE_SECONDS or at most MAX_SAVE_OVERHEAD of the training time since it (a LoRA checkpoint: every step;
# a large fully trained model: as often as a tenth of the time allows).
MAX_SAVE_OVERHEAD = 0.1
FREE_SAVE_SECONDS = 2.0
ROLLING_KEPT = 2  # newest checkpoints kept besides the save_every ones (one more than needed: one may be damaged)


class Saver:
    """When a trainer saves and which checkpoints it keeps.

    Kept for good: every ``save_every``-th step (0: none) and the last. In between, a rolling checkpoint after
    every step where saving is cheap (the last save took at most :data:`FREE_SAVE_SECONDS`, or at most
    :data:`MAX_SAVE_OVERHEAD` of the training time since it), of which the newest :data:`ROLLING_KEPT` stay. ``agree`` makes every process take the same
    decision (saving is a collective): it gets this process's wish and returns whether any process wants to.
    """

    def __init__(self, output_dir: str | os.PathLike, save_every: int, total: int, main: bool = True,
                 agree: Callable[[bool], bool] = lambda wish: wish, clock: Callable[[], float] = time.perf_counter):
        self.root, self.save_every, self.total, self.main, self.agree = Path(output_dir), save_every, total, main, agree
        self.clock = clock
        self.cost, self.since = 0.0, clock()

    def kept(self, step: int) -> bool:
        return step == self.total or bool(self.save_every and step % self.save_every == 0)

    def after_step(self, step: int, save: Callable[[], Path]) -> Path | None:
        """Save (``save()``) if due after ``step``; then drop rolling checkpoints beyond the newest few."""
        cheap = self.cost <= max(FREE_SAVE_SECONDS, MAX_SAVE_OVERHEAD * (self.clock() - self.since))
        if not self.agree(self.kept(step) or cheap):
            return None
        t0 = self.clock()
        path = save()
        self.since = self.clock()
        self.cost = self.since - t0
        if self.main:
            rolling = [p for p in checkpoints_newest_first(self.root) if not self.kept(int(p.name.removeprefix("step-")))]
            for old in rolling[ROLLING_KEPT:]:
                shutil.rmtree(old, ignore_errors=True)
        return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(ckpt: Path) -> None:
    """Size and sha256 of every file, fsynced, written last: its presence means the rest is complete."""
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST)
    for p in files:  # the data must be on disk before the manifest that vouches for it
        with open(p, "rb+") as f:
            os.fsync(f.fileno())
    entries = {str(p.relative_to(ckpt)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    write_text_atomic(ckpt / MANIFEST, json.dumps({"files": entries}, indent=2))


def verify_checkpoint(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be trusted (a missing, resized or changed file), or None when it is intact."""
    manifest = ckpt / MANIFEST
    if not manifest.exists():
        return "no manifest.json (unfinished or damaged)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    for name, want in entries.items():
        p = ckpt / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want["size"]:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {want['size']}"
        if _sha256(p) != want["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


def checkpoints_newest_first(output_dir: str | os.PathLike) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    return sorted(root.glob("step-*"), key=lambda p: p.name, reverse=True) if root.is_dir() else []


def pick_checkpoint(output_dir: str | os.PathLike, path: str | os.PathLike | None = None,
                    say=print) -> Path | None:
    """The checkpoint to resume from: ``path`` (refused when damaged), else the newest intact one of
    ``output_dir``, saying which damaged ones it skipped; None when there is none."""
    if path:
        ckpt = Path(path)
        if not ckpt.is_dir():
            raise AlarmError(f"checkpoint {ckpt} not found; pass a checkpoints/step-N directory of the run")
        if not (ckpt / MANIFEST).exists() and (ckpt / "trainer_state.json").exists():
            # Written before checkpoints carried manifests: only an explicit choice uses it, and says so.
            say(f"checkpoint {ckpt} has no manifest (written by an older alarm): resuming from it unverified")
            return ckpt
        why = verify_checkpoint(ckpt)
        if why:
            raise AlarmError(f"checkpoint {ckpt} is damaged ({why}); pick another with --resume PATH")
        return ckpt
    for ckpt in checkpoints_newest_first(output_dir):
        why = verify_checkpoint(ckpt)
        if why is None:
            return ckpt
        say(f"checkpoint {ckpt} is damaged ({why}); trying the previous one")
    return None


def check_resume_path(path: str | os.PathLike) -> Path:
    """A checkpoint named with ``--resume PATH``, checked before any work: there, intact (or, without a
    manifest, with a readable trainer state). Raises a one-line :class:`AlarmError` otherwise."""
    ckpt = pick_checkpoint(Path(path).parent, path, say=lambda _: None)
    read_state(ckpt)
    return ckpt


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint of ``output_dir`` (None when there is none)."""
    return pick_checkpoint(output_dir, say=lambda _: None)


def read_state(ckpt: Path) -> dict:
    if not (ckpt / "trainer_state.json").exists():
        raise AlarmError(f"{ckpt} is not a finished checkpoint (no trainer_state.json); pick another")
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise AlarmError(f"checkpoint {ckpt} is damaged (trainer_state.json is unreadable: {type(e).__name__}); "
                         "pick another with --resume PATH") from None
    missing = [k for k in ("step", "lora") if not isinstance(state, dict) or k not in state]
    if missing:
        raise AlarmError(f"checkpoint {ckpt} is damaged (trainer_state.json has no {missing[0]!r}); pick another "
                         "with --resume PATH")
    return state


# Settings that decide which parameters are trained: a checkpoint's weights and optimizer state only fit the
# same ones (a changed layout would load nothing into the new adapters and restart them at zero).
TRAINABLE_SETTINGS = ("lora", "lora_r", "lora_alpha", "lora_target_modules", "lora_layers")
# Optimizer settings a resumed run takes from its config (the checkpoint's optimizer state would keep its own).
OPTIMIZER_SETTINGS = {"learning_rate": "lr", "weight_decay": "weight_decay"}


def _adapter_layout_check(ckpt: Path, model, saved: dict) -> None:
    """The saved adapter's tensors must be exactly the model's adapter tensors (names and shapes)."""
    from peft import get_peft_model_state_dict

    want = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    got = {k: tuple(v.shape) for k, v in saved.items()}
    if want != got:
        extra, lacking = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        shape = sorted(k for k in set(got) & set(want) if got[k] != want[k])
        detail = (f"{len(extra)} saved tensors this model has no place for, e.g. {extra[0]}" if extra else
                  f"{len(lacking)} adapter tensors the checkpoint lacks, e.g. {lacking[0]}" if lacking else
                  f"{shape[0]} is {got[shape[0]]} there, {want[shape[0]]} here")
        raise AlarmError(f"checkpoint {ckpt} holds another adapter layout ({detail}); resume with the settings it "
                         "was trained with (lora_r, lora_target_modules, lora_layers) or start a new run")


def load_tensors(path: Path):
    """``torch.load`` of a file a checkpoint or a samples directory holds, with ``weights_only``: tensors,
    numbers, strings and containers only (and numpy arrays of RNG states written by older alarm versions),
    so a file from an untrusted source cannot run code. Anything else is a one-line error."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 (UnpicklingError, RuntimeError, EOFError …: all mean "not loadable")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise AlarmError(f"{path} cannot be loaded safely ({type(e).__name__}: {first}); it holds something other "
                         "than tensors and numbers, or is damaged: use another checkpoint or delete it") from None


def load_checkpoint(ckpt: Path, model, optimizer, lora: bool, rank: int) -> None:
    """Restore model weights (adapter or full), optimizer state and this rank's RNG streams."""
    from safetensors.torch import load_file

    try:
        if lora:
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            saved = load_peft_weights(str(ckpt / "model"), device="cpu")
        else:
            saved = load_file(str(ckpt / "model" / "model.safetensors"))
    except Exception as e:  # noqa: BLE001 (missing, truncated or foreign weight files: one line, not a traceback)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise AlarmError(f"checkpoint {ckpt} is damaged (its model weights cannot be read: {first}); pick another "
                         "with --resume PATH") from None
    if lora:
        _adapter_layout_check(ckpt, model, saved)
        set_peft_model_state_dict(model, saved)
    else:
        own = model.state_dict()
        wrong = sorted(k for k, v in saved.items() if k not in own or tuple(own[k].shape) != tuple(v.shape))
        if wrong:
            raise AlarmError(f"checkpoint {ckpt} does not fit this model ({wrong[0]}); resume with the model it was "
                             "trained from or start a new run")
        model.load_state_dict(saved, strict=False)
    if not (ckpt / "optimizer.pt").exists() and (ckpt / f"optimizer_{rank}.pt").exists():
        raise AlarmError(f"{ckpt} was written under FSDP (one optimizer shard per rank); resuming an FSDP run is "
                         "not supported yet: start a new run, or train without FSDP to resume")
    try:
        optimizer.load_state_dict(load_tensors(ckpt / "optimizer.pt"))
    except (ValueError, KeyError, RuntimeError) as e:
        raise AlarmError(f"checkpoint {ckpt}: its optimizer state does not fit the trained parameters ({e}); "
                         "resume with the settings it was trained with or start a new run") from None
    rng_file = ckpt / f"rng_{rank}.pt"
    if rng_file.exists():
        rng = load_tensors(rng_file)
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])


def restore(output_dir: str | os.PathLike, path: str | os.PathLike | None, model, optimizer, rank: int,
            expected: dict, config: dict | None = None, say=print) -> dict | None:
    """Load the given (or the newest intact) checkpoint of ``output_dir`` into ``model`` and ``optimizer``;
    returns its trainer state, or None when there is none. ``expected`` settings (e.g. ``lora``) must match.

    ``config`` (the resumed run's settings): every :data:`TRAINABLE_SETTINGS` entry must equal the
    checkpoint's (refused in one line otherwise), and the :data:`OPTIMIZER_SETTINGS` are applied to the
    restored optimizer, with a line saying so where they changed: what ``config.yaml`` records is what trains."""
    ckpt = pick_checkpoint(output_dir, path)
    if ckpt is None:
        return None
    newest = checkpoints_newest_first(output_dir)
    if not path and newest and newest[0] != ckpt:
        print(f"resuming from {ckpt.name}, the newest intact checkpoint")
    state = read_state(ckpt)
    differ = {k: state.get(k) for k, v in expected.items() if state.get(k) != v}
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    if config is not None:
        differ.update({k: saved[k] for k in TRAINABLE_SETTINGS if k in saved and saved[k] != config.get(k)})
    if differ:
        now = {**expected, **(config or {})}
        raise AlarmError(f"checkpoint {ckpt} was trained with "
                         f"{', '.join(f'{k}={v}, not {now.get(k)}' for k, v in differ.items())}; these decide the "
                         "trained parameters: resume with the same settings or start a new run (another --out)")
    load_checkpoint(ckpt, model, optimizer, bool(state["lora"]), rank)
    for key, group_key in OPTIMIZER_SETTINGS.items():
        if config is None or key not in config:
            continue
        old = optimizer.param_groups[0][group_key]
        if old != config[key]:
            for group in optimizer.param_groups:
                group[group_key] = config[key]
            say(f"resuming with {key} {config[key]:g} from the settings (the checkpoint trained with {old:g})")
    return {**state, "path": str(ckpt)}
