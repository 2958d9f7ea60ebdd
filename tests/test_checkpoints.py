"""alarm.checkpoints: what a checkpoint refuses to be resumed from, with a line that says what to do."""

from __future__ import annotations

import json

import pytest
import tiny
import torch

from alarm.checkpoints import latest_checkpoint, load_checkpoint, pick_checkpoint, restore, write_manifest
from alarm.errors import AlarmError


def test_an_fsdp_checkpoint_is_refused_on_resume_with_what_to_do(tmp_path):
    ckpt = tmp_path / "checkpoints" / "step-000001"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"lora": False, "step": 1}))
    model = tiny.causal_lm()
    model.save_pretrained(ckpt / "model")
    torch.save({}, ckpt / "optimizer_0.pt")  # per-rank optimizer shards: written under FSDP
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(AlarmError, match="written under FSDP.*not supported yet"):
        load_checkpoint(ckpt, model, optimizer, lora=False, rank=0)


def test_restore_names_the_setting_that_differs(tmp_path):
    ckpt = tmp_path / "checkpoints" / "step-000002"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"lora": True, "loss": "dpo", "step": 2}))
    (tmp_path / "checkpoints" / "latest").write_text("step-000002")
    write_manifest(ckpt)
    with pytest.raises(AlarmError, match="trained with loss=dpo"):
        restore(tmp_path, None, None, None, 0, {"lora": True, "loss": "vcb"})
    assert restore(tmp_path / "elsewhere", None, None, None, 0, {"lora": True}) is None


# ---------------------------------------------------------------- damaged checkpoints are found and skipped


def _run_with_checkpoints(tmp_path, steps=3):
    import faults

    tr = faults.ppo_trainer(tmp_path, steps=steps)
    tr.train(progress=False)
    return tr


@pytest.mark.parametrize("victim", ["model/adapter_model.safetensors", "optimizer.pt"])
def test_a_truncated_file_makes_resume_fall_back_to_the_previous_checkpoint(tmp_path, capsys, victim):
    import faults

    _run_with_checkpoints(tmp_path)
    newest = tmp_path / "checkpoints" / "step-000003"
    with open(newest / victim, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    resumed = faults.ppo_trainer(tmp_path, steps=3)
    assert resumed.resume() == 2
    out = capsys.readouterr().out
    assert "step-000003 is damaged" in out and victim in out and "resuming from step-000002" in out
    assert latest_checkpoint(tmp_path).name == "step-000002"


def test_a_changed_byte_is_caught_by_the_hash_and_resume_path_picks_one(tmp_path):
    import faults

    _run_with_checkpoints(tmp_path)
    newest = tmp_path / "checkpoints" / "step-000003"
    data = bytearray((newest / "value_head.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    (newest / "value_head.safetensors").write_bytes(bytes(data))
    with pytest.raises(AlarmError, match="value_head.safetensors does not match its sha256.*--resume PATH"):
        faults.ppo_trainer(tmp_path, steps=3).resume(newest)
    assert faults.ppo_trainer(tmp_path, steps=3).resume(tmp_path / "checkpoints" / "step-000001") == 1
    with pytest.raises(AlarmError, match="not found"):
        pick_checkpoint(tmp_path, tmp_path / "checkpoints" / "step-000009")


def test_an_unfinished_checkpoint_without_manifest_is_never_used(tmp_path):
    _run_with_checkpoints(tmp_path, steps=2)
    (tmp_path / "checkpoints" / "step-000002" / "manifest.json").unlink()
    assert pick_checkpoint(tmp_path, say=lambda _: None).name == "step-000001"
    for name in ("step-000001",):
        (tmp_path / "checkpoints" / name / "manifest.json").unlink()
    assert pick_checkpoint(tmp_path, say=lambda _: None) is None
    # A checkpoint of an older alarm (no manifest) is used only when named explicitly, and that is said.
    said = []
    older = tmp_path / "checkpoints" / "step-000002"
    assert pick_checkpoint(tmp_path, older, say=said.append) == older
    assert "no manifest" in said[0] and "unverified" in said[0]


# ---------------------------------------------------------------- the metrics log ends where the checkpoint does


def test_resume_cuts_metrics_back_to_the_checkpoint_step(tmp_path):
    """A kill after step 3's metrics line but before its checkpoint left steps [1, 2, 3] with checkpoint 2."""
    import faults

    _run_with_checkpoints(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step-000003")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "kl"')  # and half a line written when the kill came
    resumed = faults.ppo_trainer(tmp_path, steps=4)
    assert resumed.resume() == 2
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    resumed.train(progress=False)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_starts_the_log_afresh(tmp_path):
    import faults

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    assert faults.ppo_trainer(tmp_path).resume() == 0
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_resumed_tensorboard_log_drops_the_events_after_the_checkpoint():
    from alarm.trainers.runtime import tracker_kwargs

    assert tracker_kwargs("tensorboard", 3) == {"tensorboard": {"purge_step": 4}}
    assert tracker_kwargs("tensorboard", 0) == {} and tracker_kwargs("wandb", 3) == {}
