"""Supervised fine-tuning of a translation policy on parallel pairs (the paper SFT'd mT5 on
Europarl before PPO).

Built on transformers' ``Seq2SeqTrainer`` (encoder-decoder policies such as T5 / mT5) or ``Trainer``
(causal policies, loss on the target tokens only). Before and after training it measures the validation loss;
after training it translates the validation split greedily and scores it with sacrebleu (BLEU and chrF).

Writes to ``output_dir``: ``final/`` (model + tokenizer, safetensors), ``metrics.json`` (loss before/after,
BLEU, chrF, sizes), ``predictions.jsonl`` (source, reference, hypothesis), ``train_log.jsonl`` (the
Trainer's log history) and ``config.yaml`` (the resolved settings).

    alarm sft data=tests/data/mt_pairs.jsonl model=smollm2-135m-instruct epochs=1
    alarm sft --config my_sft.yaml learning_rate=1e-4
"""

from __future__ import annotations

import json
import math
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from alarm.data.mt import format_mt_prompt, load_splits
from alarm.errors import AlarmError
from alarm.generation import generate_texts
from alarm.models import is_seq2seq, load_policy
from alarm.outputs import check_output_dir


class SFTConfig(BaseModel):
    """SFT settings. ``data``: ``"europarl"`` (the paper's split through ``datasets``) or a JSONL/TSV path."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2-135m-instruct", description=(
        "the model to fine-tune: an alias, a local path or a hub id; seq2seq or causal is read from its config "
        "(the paper: mT5-base)"))
    data: str = Field("europarl", description="europarl (the paper's split, through datasets) or a JSONL/TSV "
                      "file of parallel pairs")
    source_lang: str = Field("es", description="the source language (the paper: Spanish)")
    target_lang: str = Field("en", description="the target language (the paper: English)")
    n_pairs: int | None = Field(None, ge=3, description="use the first this many pairs (null: all of a file; "
                                "the paper's 100 000 for Europarl)")
    output_dir: str = Field("runs/mt_sft", description="where the fine-tuned model and its metrics go")
    epochs: float = Field(3.0, gt=0, description="passes over the training pairs")
    learning_rate: float = Field(5e-4, gt=0, description="the optimizer's learning rate")
    batch_size: int = Field(8, ge=1, description="training pairs per device batch")
    eval_batch_size: int = Field(16, ge=1, description="pairs per batch in evaluation and translation")
    grad_accum_steps: int = Field(1, ge=1, description="batches accumulated per optimizer step")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps with a linear learning-rate "
                                "warm-up")
    max_source_length: int = Field(256, ge=8, description="cut the prompt (source) to this many tokens")
    max_target_length: int = Field(256, ge=8, description="cut the translation (target) to this many tokens")
    max_new_tokens: int = Field(128, ge=1, description="the longest translation generated for BLEU/chrF")
    eval_split: Literal["validation", "test"] = Field("validation", description="the split evaluated")
    max_eval_pairs: int | None = Field(None, ge=1, description="evaluate on at most this many pairs, loss and "
                                       "BLEU (null: all)")
    bleu_before: bool = Field(False, description="translate with the initial model too (BLEU/chrF before "
                              "training)")
    seed: int = Field(42, description="the seed of the split and of training")
    logging_steps: int = Field(10, ge=1, description="log the training loss every this many steps")
    bf16: bool = Field(False, description="train in bfloat16 mixed precision (needs a GPU that has it)")
    trust_remote_code: bool = Field(False, description="allow the model's own code from the hub; only for "
                                    "models you trust")
    progress: bool = Field(True, description="show progress bars")


# ----------------------------------------------------------------------------------------------- features


def _with_eos(ids: list[int], eos: int, limit: int) -> list[int]:
    ids = ids[: limit - 1] if ids and ids[-1] != eos else ids[:limit]
    return ids if ids and ids[-1] == eos else ids + [eos]


def encode_pair(tokenizer, source: str, target: str, seq2seq: bool, config: SFTConfig) -> dict[str, list[int]]:
    """Token ids of one training example.

    Seq2seq: encoder input = the prompt (tokenizer's special tokens on, as PPO encodes it), labels = target + EOS.
    Causal: prompt + target + EOS in one sequence; labels are −100 on the prompt so the loss covers the
    translation only. The prompt is exactly what PPO and evaluation feed the policy.
    """
    eos = tokenizer.eos_token_id
    prompt = format_mt_prompt(tokenizer, source, seq2seq, config.source_lang, config.target_lang)
    if seq2seq:
        ids = tokenizer(prompt, add_special_tokens=True, truncation=True, max_length=config.max_source_length)
        labels = _with_eos(tokenizer(target, add_special_tokens=True)["input_ids"], eos, config.max_target_length)
        return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "labels": labels}
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"][-config.max_source_length :]
    t = _with_eos(tokenizer(target, add_special_tokens=False)["input_ids"], eos, config.max_target_length)
    return {"input_ids": p + t, "attention_mask": [1] * (len(p) + len(t)), "labels": [-100] * len(p) + t}


def _dataset(tokenizer, pairs, seq2seq: bool, config: SFTConfig):
    from datasets import Dataset

    rows = [encode_pair(tokenizer, p.source, p.target, seq2seq, config) for p in pairs]
    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "labels")})


# ----------------------------------------------------------------------------------------------- scoring


def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults: 13a tokenisation, chrF with β = 2)."""
    import sacrebleu

    return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
            "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score)}


def translate(model, tokenizer, sources: list[str], seq2seq: bool, config: SFTConfig) -> list[str]:
    """Greedy translations of ``sources`` with the same prompt format as training."""

    prompts = [format_mt_prompt(tokenizer, s, seq2seq, config.source_lang, config.target_lang) for s in sources]
    out = generate_texts(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                         batch_size=config.eval_batch_size, progress="translating" if config.progress else None)
    return [o[0].strip() for o in out]


# ----------------------------------------------------------------------------------------------- the run


def run_sft(config: SFTConfig, model=None, tokenizer=None) -> dict:
    """Fine-tune, evaluate, save. ``model``/``tokenizer`` may be passed in (else loaded from ``config.model``).

    Returns the metrics written to ``metrics.json``.
    """
    from transformers import (
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(config.seed)
    if model is not None and tokenizer is None:
        raise AlarmError("run_sft: pass the tokenizer together with the model")
    out_dir = check_output_dir(config.output_dir, "output_dir")
    # the data and the output directory are checked before the model loads and long before training
    splits = load_splits(config.data, config.source_lang, config.target_lang, config.n_pairs, config.seed,
                         setting="data")
    train_pairs, eval_pairs = splits["train"], splits[config.eval_split]
    if config.max_eval_pairs is not None:
        eval_pairs = eval_pairs[: config.max_eval_pairs]
    if not train_pairs or not eval_pairs:
        raise AlarmError(f"{config.data}: the train or {config.eval_split} split is empty; give more pairs")
    if model is None:
        model, tokenizer = load_policy(config.model, trust_remote_code=config.trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise AlarmError(f"the tokenizer of {config.model!r} has no EOS token; SFT appends EOS to every target")
    seq2seq = is_seq2seq(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))

    side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # training batches: right padding keeps causal positions intact
    train_ds = _dataset(tokenizer, train_pairs, seq2seq, config)
    eval_ds = _dataset(tokenizer, eval_pairs, seq2seq, config)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model if seq2seq else None, label_pad_token_id=-100,
                                      padding=True)
    args_cls, trainer_cls = (Seq2SeqTrainingArguments, Seq2SeqTrainer) if seq2seq else (TrainingArguments, Trainer)
    args = args_cls(
        output_dir=str(out_dir / "trainer"), num_train_epochs=config.epochs, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum_steps, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio, eval_strategy="epoch", save_strategy="no",
        logging_steps=config.logging_steps, report_to="none", seed=config.seed, bf16=config.bf16,
        disable_tqdm=not config.progress, remove_unused_columns=False,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          data_collator=collator, processing_class=tokenizer)
    sources, refs = [p.source for p in eval_pairs], [p.target for p in eval_pairs]
    initial = {}
    if config.bleu_before:
        scores0 = translation_scores(translate(model, tokenizer, sources, seq2seq, config), refs)
        initial = {"bleu_before": scores0["bleu"], "chrf_before": scores0["chrf"]}
    try:
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        after = trainer.evaluate()["eval_loss"]
    finally:
        tokenizer.padding_side = side

    hyps = translate(trainer.model, tokenizer, sources, seq2seq, config)
    scores = translation_scores(hyps, refs)
    final = out_dir / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))

    metrics = {"eval_split": config.eval_split, "eval_loss_before": float(before), "eval_loss_after": float(after),
               **scores, **initial, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
               "seq2seq": seq2seq, "model_dir": str(final)}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p, h in zip(eval_pairs, hyps):
            f.write(json.dumps({"source": p.source, "reference": p.target, "hypothesis": h},
                               ensure_ascii=False) + "\n")
    with open(out_dir / "train_log.jsonl", "w") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps({k: v for k, v in entry.items() if not isinstance(v, float) or math.isfinite(v)})
                    + "\n")
    return metrics
