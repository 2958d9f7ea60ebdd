"""Files a checkpoint or a samples directory holds are loaded with ``weights_only``: a pickle that would run
code (an untrusted checkpoint, a planted reference cache) is refused in one line and runs nothing; URLs with
credentials are redacted wherever they are printed."""

from __future__ import annotations

import json
import pathlib
import random

import numpy as np
import pytest
import tiny
import torch
from safetensors.torch import save_file

from alarm import checkpoints
from alarm.errors import AlarmError, redact_url


class Planted:
    """Unpickling this touches a marker file: what an attacker's code would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _checkpoint(tmp_path, optimizer_payload=None, rng_payload=None):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = tmp_path / "ckpt"
    (ckpt / "model").mkdir(parents=True)
    save_file(model.state_dict(), ckpt / "model" / "model.safetensors")
    torch.save(optimizer_payload if optimizer_payload is not None else opt.state_dict(), ckpt / "optimizer.pt")
    if rng_payload is not None:
        torch.save(rng_payload, ckpt / "rng_0.pt")
    return ckpt, model, opt


@pytest.mark.parametrize("where", ["optimizer", "rng"])
def test_a_planted_pickle_in_a_checkpoint_runs_nothing_and_is_one_line(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = {"state": {}, "param_groups": [], "x": Planted(marker)}
    ckpt, model, opt = _checkpoint(tmp_path, **({"optimizer_payload": payload} if where == "optimizer"
                                               else {"rng_payload": {"python": Planted(marker)}}))
    with pytest.raises(AlarmError, match="cannot be loaded safely"):
        checkpoints.load_checkpoint(ckpt, model, opt, lora=False, rank=0)
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    from accelerate import Accelerator

    class Model(torch.nn.Linear):
        def save_pretrained(self, path, **kw):
            pathlib.Path(path).mkdir(parents=True)
            save_file(self.state_dict(), pathlib.Path(path) / "model.safetensors")

    model = Model(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt = checkpoints.save_checkpoint(Accelerator(cpu=True), tmp_path, 1, model, opt, {"lora": False})
    want = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoints.load_checkpoint(ckpt, model, opt, lora=False, rank=0)
    assert (random.random(), np.random.rand()) == want[:2] and torch.equal(torch.rand(1), want[2])
    assert opt.state_dict()["state"][0]["step"] == 1


def test_rng_state_written_by_older_versions_still_loads(tmp_path):
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    ckpt, model, opt = _checkpoint(tmp_path, rng_payload=rng)
    want = np.random.rand()
    np.random.seed(5)
    checkpoints.load_checkpoint(ckpt, model, opt, lora=False, rank=0)
    assert np.random.rand() == want


def test_a_planted_reference_cache_runs_nothing_and_is_recomputed(tmp_path):
    from test_vcb import _rows

    from alarm.trainers.vcb import VCBConfig, VCBTrainer

    marker = tmp_path / "pwned"
    cache = tmp_path / "ref.pt"
    torch.save({"key": Planted(marker), "logps": torch.zeros(1)}, cache)
    t = VCBTrainer(VCBConfig(batch_size=4, micro_batch_size=2, max_steps=1, eval_greedy=False), tiny.causal_lm(),
                   tiny.tokenizer(), _rows(), tmp_path / "run", reference_cache=cache)
    with pytest.warns(UserWarning, match="cannot be loaded safely"):
        ref = t.reference_logprobs()
    assert not marker.exists() and ref.shape == (len(t.rows),)
    again = VCBTrainer(VCBConfig(batch_size=4, micro_batch_size=2, max_steps=1, eval_greedy=False),
                       tiny.causal_lm(), tiny.tokenizer(), _rows(), tmp_path / "run2", reference_cache=cache)
    torch.testing.assert_close(again.reference_logprobs(), ref)  # the rewritten cache is read back


@pytest.mark.parametrize("url, secret", [
    ("http://user:hunter2@127.0.0.1:8080/v1", "hunter2"),
    ("https://judge.example/v1?api_key=sk-SECRET123&x=1", "sk-SECRET123"),
    ("http://127.0.0.1:9/v1?token=T0K3N", "T0K3N"),
])
def test_credentials_in_urls_are_redacted(url, secret):
    shown = redact_url(url)
    assert secret not in shown and "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]


def test_a_key_in_the_judge_url_never_reaches_the_terminal(tmp_path, capsys):
    from alarm.cli import main

    files = []
    for name, text in (("x", "good answer"), ("y", "other answer")):
        f = tmp_path / f"{name}.jsonl"
        f.write_text(json.dumps({"prompt_id": "1", "sample": 0, "prompt": "q", "completion": text,
                                 "scores": {"m": 1.0}}) + "\n")
        files.append(str(f))
    rc = main(["compare", *files, "--out-dir", str(tmp_path / "out"), "--judge-model", "m", "--judge-retries", "0",
               "--judge-url", "http://judge:SECRETKEY@127.0.0.1:9/v1?api_key=SECRETKEY2"])
    err = capsys.readouterr().err
    assert rc == 2 and "127.0.0.1:9" in err
    assert "SECRETKEY" not in err
    assert "SECRETKEY" not in "".join(p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file())
