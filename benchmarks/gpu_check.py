"""The GPU check of issue 17 (run it through ``benchmarks/gpu_check.sh``): on one CUDA GPU, in under 10 minutes,
with no network and no downloaded weights —

1. which dependencies are present (and what each missing one costs);
2. the device-sensitive tests (``tests/test_device.py``) on the device;
3. one quickstart-sized alarm PPO run in bf16 (12 steps, 8 prompts, 40 new tokens, LoRA on the top 10 of
   30 layers, a reward model on the GPU);
4. `make demo`'s GPU budget (``alarm.recipes.ppo.demo_budget``: 4× the steps and prompts per step, bf16
   autocast) on the same shape, timed against the CPU demo's training time;
5. one step of alarm PPO vs TRL's GRPOTrainer on the same work and the same GPU, bf16 weights in both
   (skipped without trl).

The policy is a randomly initialised model of SmolLM2-135M's shape (Llama: hidden 576, 30 layers, 9 heads,
3 KV heads, MLP 1536, vocabulary 49152, tied embeddings: 134.5 M parameters) with a byte-level BPE
tokenizer of the same vocabulary size built in-process, so timings match the quickstart policy's cost
without its weights. The holistic reward is a small random sequence classifier on the same device. Every
section records ok / failed / skipped with its reason; results go to ``benchmarks/results/gpu/<name>.json``
and ``.md`` after each section, so a run cut short still leaves what it measured. ``--cpu`` runs the same
sections on the CPU, shortened (2 PPO steps of 4 prompts × 8 tokens in bf16; one fp32 step of 4 completions ×
8 tokens for the TRL comparison): a check that the script works, not a measurement. ``--smoke``: the CPU
fallback on a tiny model of the same kind (2 layers, hidden 64), without the device tests, in seconds; the
test suite runs it (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
# SmolLM2-135M's shape; --smoke makes it tiny
SHAPE = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
         "intermediate_size": 1536}
TINY_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128}
sys.path.insert(0, str(ROOT / "src"))

# (module, what needs it)
DEPS = [
    ("torch", "everything"), ("transformers", "models"), ("peft", "LoRA"), ("accelerate", "alarm PPO"),
    ("safetensors", "checkpoints"), ("numpy", "alarm"), ("pydantic", "alarm's configs and PPOConfig: no alarm PPO without it"),
    ("yaml", "recipes"), ("rich", "PPO progress bar"), ("pysbd", "alarm.text (reward models import it)"),
    ("requests", "remote rewards, the reward server's tests"), ("pytest", "the device tests"),
    ("datasets", "TRL's GRPOTrainer"), ("trl", "the step-time comparison with TRL GRPO"),
    ("gguf", "loading the real SmolLM2 weights (not needed: a random model of its shape is timed)"),
]


def median(xs):
    return round(statistics.median(xs), 4) if xs else None


# -------------------------------------------------------------------------------------------- environment


def environment(device: str) -> dict:
    found, missing = {}, {}
    for mod, why in DEPS:
        try:
            m = importlib.import_module(mod)
            found[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a broken install counts as missing, with its reason
            missing[mod] = f"{why} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "load1_at_start": round(os.getloadavg()[0], 2),
            "found": found, "missing": missing, "requested_device": device}
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                           "capability": f"{p.major}.{p.minor}", "count": torch.cuda.device_count(),
                           "bf16": torch.cuda.is_bf16_supported()}
    except ImportError:
        pass
    try:
        import alarm.trainers.ppo  # noqa: F401

        info["alarm_ppo_imports"] = True
    except Exception as e:  # noqa: BLE001
        info["alarm_ppo_imports"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return info


# ------------------------------------------------------------------------------------ device-sensitive tests


def device_tests(device: str, timeout: float) -> dict:
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = {**os.environ, "ALARM_TEST_DEVICE": device,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_device.py", "-q", "-p", "no:cacheprovider",
                                   f"--junitxml={xml}"], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        cases = []
        if xml.exists():
            import xml.etree.ElementTree as ET

            for tc in ET.parse(xml).getroot().iter("testcase"):
                outcome = "passed"
                for tag in ("failure", "error", "skipped"):
                    el = tc.find(tag)
                    if el is not None:
                        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                        msg = (el.get("message") or "").splitlines()[0][:300] if el.get("message") else ""
                        break
                cases.append({"test": tc.get("name"), "outcome": outcome, "time_s": float(tc.get("time", 0)),
                              **({"message": msg} if outcome != "passed" else {})})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    ok = proc.returncode == 0 and counts["passed"] > 0
    return {"status": "ok" if ok else "failed", "returncode": proc.returncode, "wall_s": round(wall, 1),
            "counts": counts, "cases": cases, **({} if ok else {"output_tail": proc.stdout[-2000:] + proc.stderr[-1500:]})}


# ---------------------------------------------------------------------- the quickstart policy's shape, no weights


def synthetic_tokenizer(vocab_size: int = 49152):
    """A byte-level BPE tokenizer with exactly ``vocab_size`` entries, built without training: the 256 byte
    symbols, then merges making every 2- and 3-letter lowercase string (with and without a leading space)
    and as many 4-letter ones as fit. Every id a random model samples decodes to text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|pad|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = []
    letters = "abcdefghijklmnopqrstuvwxyz"

    def add(left, right):
        if len(vocab) < vocab_size and left + right not in vocab:
            vocab[left + right] = len(vocab)
            merges.append((left, right))

    for c in letters:
        add("Ġ", c)
    for n in (2, 3, 4):
        for lead in ("", "Ġ"):
            for combo in itertools.product(letters, repeat=n):
                if len(vocab) >= vocab_size:
                    break
                s = lead + "".join(combo)
                add(s[:-1], s[-1])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                  model_max_length=2048)
    assert len(out) == vocab_size, len(out)
    return out


def smollm2_shaped(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, **SHAPE, max_position_embeddings=2048, rope_theta=100000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def top_ten() -> list[int]:
    """The top 10 layers (as the quickstart's lora_layers 20-29), or the top half of a smaller model."""
    n = SHAPE["num_hidden_layers"]
    return list(range(max(n - 10, n // 2), n))


def quickstart_records() -> list[dict]:
    rows = [json.loads(x) for x in (ROOT / "src" / "alarm" / "data" / "quickstart.jsonl").read_text().splitlines() if x.strip()]
    out = []
    for r in rows:
        if r.get("split") != "train":
            continue
        passages = "\n".join(r["passages"])
        out.append({"prompt": f"Passages:\n{passages}\n\nQuestion: {r['question']}\nAnswer:", "question": r["question"],
                    "passages": list(r["passages"]), "reference": r["reference"]})
    return out


def reward_set(tokenizer, device: str, records: list[dict]):
    """Holistic: a small random sequence classifier on the device (z-normalised); aspect: words (shaped)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alarm.combine import CombineConfig, RewardSet
    from alarm.rewards.base import FunctionReward

    torch.manual_seed(1)
    rm_cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=2048)
    rm_model = LlamaForSequenceClassification(rm_cfg).eval().to(device)
    try:
        from alarm.rewards.hf_models import SequenceClassifierReward

        holistic = SequenceClassifierReward(rm_model, tokenizer, batch_size=16, max_length=1024, name="holistic")
        holistic_kind = f"random sequence classifier on {device}"
    except ImportError as e:  # e.g. pysbd missing: alarm.rewards.hf_models imports alarm.text
        holistic = FunctionReward(lambda p, c, **k: [float(len(set(x.split()))) for x in c], name="holistic")
        holistic_kind = f"distinct words (the reward-model backend did not import: {e})"
    rs = RewardSet(CombineConfig(mode="hierarchical", holistic_weight=5.0, epsilon=0.6), holistic=holistic,
                   aspects={"words": FunctionReward(lambda p, c, **k: [float(len(x.split())) for x in c], name="words")},
                   normalize=("holistic", "words"))
    fit = records[:16]
    texts = [r["reference"] for r in fit] + [r["passages"][0] for r in fit]
    rs.fit([r["question"] for r in fit] * 2, texts)
    return rs, holistic_kind


def _accelerator(device: str, mixed_precision: str = "no"):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one state per process: the demo section's bf16 autocast follows fp32 sections
    AcceleratorState._reset_state()
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)


def _sync(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ppo_run(device: str, steps: int, new_tokens: int, rollout: int = 8, mini: int = 4, epochs: int = 2,
            autocast: bool = False) -> dict:
    """bf16 weights, or (``autocast``) fp32 weights under accelerate's bf16 autocast, as `make demo` runs on a GPU."""
    import torch

    from alarm.trainers.ppo import PPOConfig, PPOTrainer

    tok = synthetic_tokenizer()
    records = quickstart_records()
    model = smollm2_shaped(tok)
    if not autocast:
        model = model.to(torch.bfloat16)
    rs, holistic_kind = reward_set(tok, device, records)
    cfg = PPOConfig(steps=steps, rollout_batch_size=rollout, mini_batch_size=mini, grad_accum_steps=1, ppo_epochs=epochs,
                    max_new_tokens=new_tokens, learning_rate=5e-4, lora_layers=top_ten(), seed=0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        tr = PPOTrainer(cfg, model, tok, rs, records, out,
                        accelerator=_accelerator(device, "bf16" if autocast else "no"))
        _sync(device)
        t0 = time.perf_counter()
        metrics = tr.train(progress=False)
        _sync(device)
        wall = time.perf_counter() - t0
    dtypes = sorted({str(p.dtype) for p in tr.unwrapped.model.parameters()})
    finite = all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for m in metrics for v in m.values())
    tokens = sum(m["length/tokens"] * rollout for m in metrics)
    result = {
        "status": "ok" if finite else "failed", "steps": steps, "new_tokens": new_tokens, "prompts_per_step": rollout,
        "mini_batch": mini, "ppo_epochs": epochs, "dtype": dtypes, "bf16_autocast": autocast,
        "holistic_reward": holistic_kind, "device": str(tr.accelerator.device), "wall_s": round(wall, 2),
        "step_s_median": median([m["time/step"] for m in metrics[1:] or metrics]),
        "phases_s_median": {k: median([m[k] for m in metrics[1:] or metrics])
                            for k in ("time/generate", "time/score", "time/forward", "time/update")},
        "generated_tokens_per_s": round(tokens / sum(m["time/generate"] for m in metrics), 1),
        "first_step_approx_kl": metrics[0]["ppo/approx_kl"], "all_metrics_finite": finite,
        "last": {k: metrics[-1][k] for k in ("return/mean", "gate_open_rate", "kl", "length/tokens", "entropy")
                 if k in metrics[-1]},
    }
    if device.startswith("cuda"):
        result["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


CPU_DEMO_TRAIN_S = 240  # the CPU demo's PPO part on 2 quiet cores, about (docs: the demo's measured time)


def demo_gpu(device: str, cpu: bool) -> dict:
    """`make demo`'s GPU budget (alarm.recipes.ppo.demo_budget: its steps and prompts per step, bf16 autocast) on
    the quickstart policy's shape: does it take about the CPU demo's time? (--cpu: 2 short steps, a check only)."""
    from alarm.recipes.ppo import demo_budget

    overrides, line = demo_budget(cuda=True, bf16=True)
    kv = dict(o.split("=", 1) for o in overrides)
    steps, rollout, mini = int(kv["ppo.steps"]), int(kv["ppo.rollout_batch_size"]), int(kv["ppo.mini_batch_size"])
    if cpu:
        steps, rollout, mini = 2, 4, 2
    result = ppo_run(device, steps=steps, new_tokens=40 if not cpu else 8, rollout=rollout, mini=mini, autocast=True)
    return {**result, "budget_line": line, "cpu_demo_train_s": CPU_DEMO_TRAIN_S}


def step_time_vs_trl(device: str, new_tokens: int, warmup: int, measured: int, prompts: int = 4, mini: int = 4,
                     epochs: int = 2) -> dict:
    """The same work in both trainers (see benchmarks/step_time.py), bf16 weights, on ``device``."""
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        return {"status": "skipped", "reason": f"{' and '.join(missing)} not installed (TRL's GRPOTrainer needs them)"}
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alarm.combine import CombineConfig, RewardSet, as_trl_reward
    from alarm.rewards.base import FunctionReward
    from alarm.trainers.ppo import PPOConfig, PPOTrainer

    tok = synthetic_tokenizer()
    records = quickstart_records()

    def length_set():
        return RewardSet(CombineConfig(mode="holistic_only", holistic_weight=1.0), normalize=(),
                         holistic=FunctionReward(lambda p, c, **k: [float(len(x.split())) for x in c], name="length"))

    dtype = torch.float32 if device == "cpu" else torch.bfloat16  # CPUs without bf16 units back-propagate bf16 slowly

    def policy():
        m = smollm2_shaped(tok).to(dtype)
        m.generation_config.min_new_tokens = new_tokens  # exactly new_tokens per completion in both
        m.generation_config.max_new_tokens = new_tokens
        return m

    tmp = tempfile.mkdtemp(prefix="alarm-gpu-check-")
    cfg = PPOConfig(max_new_tokens=new_tokens, rollout_batch_size=2 * prompts, mini_batch_size=mini, grad_accum_steps=1,
                    ppo_epochs=epochs, learning_rate=1e-5, max_grad_norm=1.0, lora=True, lora_r=16, lora_alpha=32,
                    lora_dropout=0.05, kl_coef=0.04, adaptive_kl=False, steps=10_000, seed=0,
                    # no KL early stop, so both trainers always run every pass (the setting's name changed once)
                    **{"early_stop_kl" if "early_stop_kl" in PPOConfig.model_fields else "target_kl": 1e9})
    ours = PPOTrainer(cfg, policy(), tok, length_set(), records, f"{tmp}/ours", accelerator=_accelerator(device))
    n = len(records)
    ours.prompt_batch = lambda step: [records[(step * prompts + i) % n] for i in range(prompts) for _ in range(2)]
    steps_per_gen = 2 * prompts // mini
    cycle = steps_per_gen * epochs
    times = {"TRL GRPOTrainer": [], "alarm PPO": []}
    state = {"start": None}

    class Interleave(TrainerCallback):
        def on_step_begin(self, a, s, control, **kw):
            if s.global_step % cycle:
                return
            _sync(device)
            now = time.perf_counter()
            if state["start"] is not None:
                times["TRL GRPOTrainer"].append(now - state["start"])
            t0 = time.perf_counter()
            ours.step()
            _sync(device)
            times["alarm PPO"].append(time.perf_counter() - t0)
            state["start"] = time.perf_counter()

    grpo = GRPOConfig(
        output_dir=f"{tmp}/trl", use_cpu=device == "cpu", bf16=dtype == torch.bfloat16, gradient_checkpointing=False,
        seed=0,
        per_device_train_batch_size=mini, gradient_accumulation_steps=1, steps_per_generation=steps_per_gen,
        num_generations=2, num_iterations=epochs, beta=0.04, learning_rate=1e-5, max_grad_norm=1.0,
        max_completion_length=new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": new_tokens}, shuffle_dataset=False,
        max_steps=cycle * (warmup + measured + 1), logging_steps=10_000, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in records])
    trainer = GRPOTrainer(model=policy(), reward_funcs=as_trl_reward(length_set(), "length"), args=grpo,
                          train_dataset=data, processing_class=tok, peft_config=lora, callbacks=[Interleave()])
    trainer.train()
    kept = {k: v[warmup: warmup + measured] for k, v in times.items()}
    trl_med = median(kept["TRL GRPOTrainer"])
    return {"status": "ok", "new_tokens": new_tokens, "completions_per_step": 2 * prompts,
            "optimizer_steps_per_step": cycle, "warmup": warmup,
            "step_s": {k: {"median": median(v), "all": [round(x, 4) for x in v]} for k, v in kept.items()},
            "ratio_to_trl": round(median(kept["alarm PPO"]) / trl_med, 3) if trl_med else None,
            "settings": f"LoRA r16 on q/k/v/o of all 30 layers, {str(dtype).removeprefix('torch.')} weights, {epochs} passes × "
                        f"{2 * prompts // mini} mini-batches of {mini}, β 0.04 KL to the adapter-free reference in "
                        "both, length reward"}


# ---------------------------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    env = res["environment"]
    gpu = env.get("gpu")
    lines = [f"# GPU check ({res['name']})", "",
             f"{res['started']}; device {res['device']}" + (f": {gpu['name']}, {gpu['memory_gb']} GB, "
                                                         f"capability {gpu['capability']}" if gpu else "")
             + f"; python {env['python']}, torch {env['found'].get('torch', '-')} (CUDA {env.get('torch_cuda')}), "
               f"{env['cpu_count']} CPUs (1-minute load {env.get('load1_at_start')} at start, "
               f"{env.get('load1_now')} at end). Total {res.get('total_s', '?')} s.", ""]
    if env["missing"]:
        lines += ["Missing dependencies:", ""] + [f"- `{k}`: {v}" for k, v in env["missing"].items()] + [""]
    lines += ["Found: " + ", ".join(f"{k} {v}" for k, v in env["found"].items()), "",
              "| section | status | result |", "|---|---|---|"]
    for key, title in (("device_tests", "device-sensitive tests"), ("ppo_bf16", "quickstart-sized PPO, bf16"),
                       ("demo_gpu", "the GPU demo's budget, bf16 autocast"),
                       ("step_time", "step time vs TRL GRPO")):
        s = res.get(key)
        if s is None:
            lines.append(f"| {title} | not run | |")
            continue
        if s["status"] != "ok" and "counts" not in s:
            lines.append(f"| {title} | {s['status']} | {s.get('reason', '')} |")
            continue
        if key == "device_tests":
            c = s["counts"]
            detail = f"{c['passed']} passed, {c['failed'] + c['error']} failed, {c['skipped']} skipped in {s['wall_s']} s"
        elif key in ("ppo_bf16", "demo_gpu"):
            detail = (f"{s['steps']} steps × {s['prompts_per_step']} prompts × {s['new_tokens']} tokens in {s['wall_s']} s; median step "
                      f"{s['step_s_median']} s (generate {s['phases_s_median']['time/generate']}, update "
                      f"{s['phases_s_median']['time/update']}); {s['generated_tokens_per_s']} generated tokens/s; "
                      f"first-step approx KL {s['first_step_approx_kl']:.2e}"
                      + (f"; peak GPU memory {s['peak_gpu_memory_gb']} GB" if "peak_gpu_memory_gb" in s else ""))
        else:
            st = s["step_s"]
            detail = (f"alarm PPO {st['alarm PPO']['median']} s vs TRL {st['TRL GRPOTrainer']['median']} s per step "
                      f"(ratio {s['ratio_to_trl']}; {s['completions_per_step']} completions × {s['new_tokens']} tokens)")
        lines.append(f"| {title} | {s['status']} | {detail} |")
    failed = [c for c in (res.get("device_tests") or {}).get("cases", []) if c["outcome"] in ("failed", "error")]
    if failed:
        lines += ["", "Failed device tests:", ""] + [f"- `{c['test']}`: {c.get('message', '')}" for c in failed]
    if res.get("cpu_fallback"):
        lines += ["", "CPU fallback: shortened sections (see the JSON for settings); a check that the script runs, "
                      "not a measurement."]
    return "\n".join(lines) + "\n"


def write(res: dict) -> None:
    global RESULTS
    RESULTS = Path(res.get("out") or RESULTS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{res['name']}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (RESULTS / f"{res['name']}.md").write_text(markdown(res))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run every section on the CPU, shortened")
    p.add_argument("--name", help="result file name (default: cpu-fallback, or cuda-<gpu name>)")
    p.add_argument("--skip", nargs="*", default=[], choices=["tests", "ppo", "demo", "trl"])
    p.add_argument("--smoke", action="store_true", help="--cpu on a tiny model, no device tests: seconds")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/gpu)")
    args = p.parse_args(argv)
    if args.smoke:
        args.cpu, args.name = True, args.name or "smoke"
        args.skip = [*args.skip, "tests"]
        SHAPE.update(TINY_SHAPE)
    t_start = time.perf_counter()
    device = "cpu"
    try:
        import torch

        torch.manual_seed(0)
        if not args.cpu:
            if not torch.cuda.is_available():
                print("gpu_check: no CUDA device; run with --cpu for the CPU fallback", file=sys.stderr)
                return 2
            device = "cuda"
        else:
            torch.set_num_threads(min(4, os.cpu_count() or 1))
    except ImportError:
        print("gpu_check: torch is not installed", file=sys.stderr)
        return 2
    env = environment(device)
    gpu = env.get("gpu", {}).get("name", "gpu")
    name = args.name or ("cpu-fallback" if args.cpu else "cuda-" + "".join(c if c.isalnum() else "-" for c in gpu).strip("-").lower())
    res = {"name": name, "device": device, "cpu_fallback": args.cpu, "environment": env, "out": args.out,
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    write(res)
    ppo_ok = env["alarm_ppo_imports"] is True
    sections = [
        ("device_tests", "tests", lambda: device_tests(device, timeout=240)),
        # the quickstart's PPO settings on a GPU; on a CPU, small enough to finish in a few minutes
        ("ppo_bf16", "ppo", lambda: ppo_run(device, steps=12, new_tokens=40) if not args.cpu else
         ppo_run(device, steps=2, new_tokens=8, rollout=4, mini=2, epochs=1)),
        ("demo_gpu", "demo", lambda: demo_gpu(device, args.cpu)),
        ("step_time", "trl", lambda: step_time_vs_trl(device, new_tokens=64, warmup=1, measured=4) if not args.cpu else
         step_time_vs_trl(device, new_tokens=8, warmup=0, measured=1, prompts=2, mini=2, epochs=1)),
    ]
    for key, flag, run in sections:
        if flag in args.skip:
            res[key] = {"status": "skipped", "reason": "--skip"}
        elif key != "device_tests" and not ppo_ok:
            res[key] = {"status": "skipped", "reason": f"alarm's PPO does not import: {env['alarm_ppo_imports']}"}
        else:
            print(f"[gpu_check] {key} ...", flush=True)
            t0 = time.perf_counter()
            try:
                res[key] = run()
            except Exception as e:  # noqa: BLE001 - record and go on: the other sections still count
                res[key] = {"status": "failed", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                            "traceback": traceback.format_exc()[-3000:]}
            res[key].setdefault("section_s", round(time.perf_counter() - t0, 1))
            print(f"[gpu_check] {key}: {res[key]['status']} {res[key].get('reason', '')}", flush=True)
        res["total_s"] = round(time.perf_counter() - t_start, 1)
        res["environment"]["load1_now"] = round(os.getloadavg()[0], 2)
        write(res)
    if "accelerate.state" in sys.modules:  # leave no bf16 accelerator state behind (main() runs in-process in tests)
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    print(markdown(res))
    print(f"wrote {RESULTS / (name + '.json')} and .md")
    return 0 if all(res[k]["status"] in ("ok", "skipped") for k, _, _ in sections) else 1


if __name__ == "__main__":
    raise SystemExit(main())
