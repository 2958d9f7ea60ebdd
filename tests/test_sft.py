"""alarm.trainers.sft / `alarm sft`: supervised fine-tuning of a translation policy (loss, sacrebleu, config)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import tiny

from alarm.errors import AlarmError

DATA = Path(__file__).parent / "data" / "mt_pairs.jsonl"


# ---------------------------------------------------------------- SFT


def test_alarm_sft_lowers_validation_loss_and_scores_with_sacrebleu(tmp_path):
    import sacrebleu

    from alarm.recipes import sft

    model_dir = tmp_path / "tiny-t5"
    tiny.seq2seq_lm().save_pretrained(model_dir)
    tiny.tokenizer().save_pretrained(model_dir)
    parser = argparse.ArgumentParser()
    sft.add_commands(parser.add_subparsers())
    out = tmp_path / "sft"
    args = parser.parse_args(["sft", f"model={model_dir}", f"data={DATA}", f"output_dir={out}", "epochs=3",
                              "learning_rate=5e-3", "batch_size=8", "max_new_tokens=16", "progress=false", "bleu_before=true",
                              "logging_steps=50"])
    assert args.handler(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["seq2seq"] is True and m["eval_split"] == "validation"
    assert m["eval_loss_after"] < m["eval_loss_before"] - 0.3
    assert isinstance(m["bleu"], float) and 0.0 <= m["bleu"] <= 100.0
    assert 0.0 <= m["bleu_before"] <= 100.0 and 0.0 <= m["chrf_before"] <= 100.0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == m["eval_pairs"] > 0
    hyps, refs = [p["hypothesis"] for p in preds], [p["reference"] for p in preds]
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert (out / "final" / "model.safetensors").exists() and (out / "config.yaml").exists()
    assert sacrebleu.corpus_bleu(refs, [refs]).score == pytest.approx(100.0)  # the scorer is the real one


def test_sft_causal_labels_cover_only_the_translation():
    from alarm.trainers.sft import SFTConfig, encode_pair

    tok = tiny.tokenizer()
    ex = encode_pair(tok, "Hola.", "Hello.", seq2seq=False, config=SFTConfig())
    n_prompt = sum(1 for x in ex["labels"] if x == -100)
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tok.decode(ex["labels"][n_prompt:], skip_special_tokens=True) == "Hello."
    assert ex["labels"][-1] == tok.eos_token_id
    s2s = encode_pair(tok, "Hola.", "Hello.", seq2seq=True, config=SFTConfig())
    assert tok.decode(s2s["input_ids"]) == "translate Spanish to English: Hola."
    assert s2s["labels"][-1] == tok.eos_token_id


def test_sft_config_rejects_unknown_settings(tmp_path):
    from alarm.recipes.sft import load_sft_config

    with pytest.raises(AlarmError, match="learnig_rate: unknown setting"):
        load_sft_config(None, ["learnig_rate=1e-4"])
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text("epochs: 2\ndata: pairs.tsv\n")
    cfg = load_sft_config(str(cfg_file), ["epochs=1"])
    assert cfg.epochs == 1 and cfg.data == "pairs.tsv"
    with pytest.raises(AlarmError, match="batch_size"):
        load_sft_config(None, ["batch_size=0"])


def test_sft_without_network_names_the_data_setting_before_loading_a_model(monkeypatch, tmp_path):
    """Issue 18 item 8: the hint named data.path, a recipe setting; `alarm sft` calls it data. The data is
    read before the model loads."""
    import datasets

    import alarm.trainers.sft as sft

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(sft, "load_policy", lambda config: pytest.fail("the model loaded before the data"))
    config = sft.SFTConfig(output_dir=str(tmp_path / "o"))
    with pytest.raises(AlarmError, match=r"give a parallel JSONL/TSV file instead \(data=pairs.jsonl\)$") as e:
        sft.run_sft(config)
    assert "data.path" not in str(e.value) and not (tmp_path / "o").exists()
