"""alarm.checkpoints: what a checkpoint refuses to be resumed from, with a line that says what to do."""

from __future__ import annotations

import json

import pytest
import tiny
import torch

from alarm.checkpoints import load_checkpoint, restore
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
    with pytest.raises(AlarmError, match="trained with loss=dpo"):
        restore(tmp_path, None, None, None, 0, {"lora": True, "loss": "vcb"})
    assert restore(tmp_path / "elsewhere", None, None, None, 0, {"lora": True}) is None
