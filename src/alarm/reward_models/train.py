"""Reward models from QA-Feedback's human feedback (docs/method.md §2.6): ``alarm rm train --config rm.yaml``.

Four kinds, all on one encoder backbone (default: the offline all-MiniLM-L6-v2; any HF encoder by name, the
paper used Longformer-base), all reading ``reward_prompt(question, passages)`` as the first sequence:

- ``holistic`` with ``architecture: grounding_features`` (the recipe's default): a linear Bradley–Terry score on
  grounding features of the frozen encoder, see ``alarm.reward_models.grounding_bt``.
- ``holistic`` with ``architecture: cross_encoder``: AutoModelForSequenceClassification(num_labels=1) trained with the Bradley–Terry loss
  −log σ(s_preferred − s_other) on the 6 pairwise preferences per question (ties skipped). The 4 responses of
  a question are encoded once per step and all its pairs scored from those 4 scores.
- ``factuality``: AutoModelForTokenClassification (clean / error) predicting, at the separator before each
  sentence of ``prediction 1``, whether it overlaps a Wrong-Grounding or Unverifiable span. Inputs come from
  ``build_span_inputs``, the exact format ``SpanRewardModel`` reads, so the saved model is a reward as is.
- ``relevance``: the same per sub-sentence for Irrelevant, Redundant, Incoherent.
- ``completeness``: sequence-level, from the **missing-info annotations** (label 1 = ``prediction 1`` misses
  no answer and no major auxiliary information), trained with a logistic loss. Not from the preferences: they
  are the holistic model's training signal, so a completeness model trained on them would be a second copy of
  the holistic reward; the missing-info annotations are the only completeness-specific signal in the data.

The span models use a class-weighted cross-entropy (errors are rare: ~15% of factuality sentences), else the
cheapest fit is "always clean". Training uses transformers' Trainer with a custom ``compute_loss``; the model
is saved with safetensors, its tokenizer (``model_max_length`` = the training ``max_length``, so the reward
truncates the way training did) and ``rm_config.json``; the held-out evaluation runs at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alarm.data.qa_feedback import (
    DEFAULT_DIR,
    FACTUALITY_ERRORS,
    RELEVANCE_ERRORS,
    FeedbackRecord,
    completeness_label,
    error_labels,
    load_feedback,
    reward_prompt,
    split_feedback,
)
from alarm.errors import AlarmError
from alarm.models import minilm_path
from alarm.reward_models.evaluate import evaluate_reward_model, summarize_folds
from alarm.reward_models.evidence import EvidenceFeaturizer, train_evidence_model
from alarm.reward_models.grounding_bt import train_grounding_bt
from alarm.rewards.hf_models import build_span_inputs

SPAN_KINDS = {"factuality": ("sentence", FACTUALITY_ERRORS, 0.5), "relevance": ("subsentence", RELEVANCE_ERRORS, 0.3)}


class RMTrainConfig(BaseModel):
    """Settings of one reward-model training run (YAML, unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["holistic", "factuality", "relevance", "completeness"] = Field(description=(
        "which reward model: holistic (preferences), factuality / relevance (per-sentence errors), "
        "completeness (missing information)"))
    architecture: Literal["cross_encoder", "grounding_features", "evidence_features"] = Field(
        "cross_encoder", description=(
            "cross_encoder: fine-tune the backbone; grounding_features (holistic): Bradley–Terry on grounding "
            "features of the frozen backbone; evidence_features (holistic, factuality, relevance): linear models "
            "on what the frozen backbone sees in every passage sentence"))
    max_evidence: int = Field(80, ge=1, description="grounding / evidence features: passage sentences read per "
                              "question")
    grounded_at: float = Field(0.8, ge=-1, le=1, description="grounding_features: the cosine at which a "
                               "sentence counts as grounded")
    data: str = Field(f"{DEFAULT_DIR}/feedback.json", description="the QA-Feedback feedback file: a path or an "
                      "http(s) URL")
    backbone: str | None = Field(None, description="the encoder: an HF name or directory (null: the packaged "
                                 "all-MiniLM-L6-v2; the paper: Longformer-base)")
    epochs: float = Field(2.0, gt=0, description="cross_encoder: passes over the training data")
    learning_rate: float = Field(5e-5, gt=0, description="cross_encoder: the optimizer's learning rate")
    batch_size: int = Field(8, ge=1, description="holistic: questions per step (4 responses each); others: "
                            "responses")
    max_length: int = Field(256, ge=16, description="tokens per input; the prompt (question + passages) is cut "
                            "to fit, the response never is")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay; grounding_features: the L2 "
                                "coefficient λ on w")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="cross_encoder: share of the steps with a linear "
                                "learning-rate warm-up")
    error_weight: float | None = Field(None, gt=0, description="factuality / relevance: the loss weight of the "
                                       "error class (null: balanced by class frequency)")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of the questions held out for "
                                       "validation (split by question)")
    max_train_questions: int | None = Field(None, ge=1, description="train on at most this many questions "
                                            "(null: all)")
    seed: int = Field(42, description="the seed of the split and of training")
    train_layers: int | None = Field(None, ge=0, description="train only the top N encoder layers and the head "
                                     "(null: all)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (null: torch's default)")
    output_dir: str | None = Field(None, description="where the model goes (null: runs/rm/<kind>)")

    def out_dir(self) -> Path:
        return Path(self.output_dir or f"runs/rm/{self.kind}")

    @model_validator(mode="after")
    def _check(self):
        if self.architecture == "grounding_features" and self.kind != "holistic":
            raise ValueError("architecture 'grounding_features' is for kind holistic only")
        if self.architecture == "evidence_features" and self.kind == "completeness":
            raise ValueError("architecture 'evidence_features' is for kinds holistic, factuality and relevance")
        return self


# ---------------------------------------------------------------------------------------------- examples


def _pair_encode(tokenizer, prompt: str, response: str, max_length: int) -> dict | None:
    """(prompt, response) cut from the prompt side; None when the response alone does not fit."""
    n = len(tokenizer(response, add_special_tokens=False)["input_ids"])
    if n + tokenizer.num_special_tokens_to_add(pair=True) + 1 > max_length:
        return None
    return dict(tokenizer(prompt, response, truncation="only_first", max_length=max_length))


def holistic_examples(records: list[FeedbackRecord], tokenizer, max_length: int) -> list[dict]:
    """One example per question with at least one decisive preference: its 4 encodings and its pairs."""
    out = []
    for r in records:
        pairs = r.pairs()
        if not pairs:
            continue
        prompt = reward_prompt(r.question, r.passages)
        encodings = [_pair_encode(tokenizer, prompt, p, max_length) for p in r.predictions]
        if any(e is None for e in encodings):  # a response longer than max_length: skip the question
            continue
        out.append({"encodings": encodings, "pairs": pairs})
    return out


def span_examples(records: list[FeedbackRecord], tokenizer, kind: str, max_length: int) -> list[dict]:
    """One example per ``prediction 1``: span-model input with a label at each separator (−100 elsewhere)."""

    level, types, _ = SPAN_KINDS[kind]
    out = []
    for r in records:
        completion = r.predictions[0]
        if not completion.strip():
            continue
        try:
            inp = build_span_inputs(tokenizer, reward_prompt(r.question, r.passages), completion, level,
                                    max_length=max_length)
        except AlarmError:  # the answer with its separators does not fit max_length
            continue
        if not inp.sep_positions:
            continue
        labels = error_labels(completion, r.errors, types, level)
        token_labels = [-100] * len(inp.encoding["input_ids"])
        for pos, y in zip(inp.sep_positions, labels):
            token_labels[pos] = y
        out.append({**inp.encoding, "labels": token_labels})
    return out


def completeness_examples(records: list[FeedbackRecord], tokenizer, max_length: int) -> list[dict]:
    out = []
    for r in records:
        enc = _pair_encode(tokenizer, reward_prompt(r.question, r.passages), r.predictions[0], max_length)
        if enc is not None and r.predictions[0].strip():
            out.append({**enc, "labels": float(completeness_label(r))})
    return out


# ---------------------------------------------------------------------------------------------- losses


def bradley_terry_loss(scores: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor) -> torch.Tensor:
    """mean −log σ(s_w − s_l) over the pairs (indices into ``scores``)."""
    return -F.logsigmoid(scores[winners] - scores[losers]).mean()


class HolisticCollator:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[dict]) -> dict:
        flat, winners, losers = [], [], []
        for ex in batch:
            base = len(flat)
            flat.extend(ex["encodings"])
            for w, lo in ex["pairs"]:
                winners.append(base + w)
                losers.append(base + lo)
        enc = self.tokenizer.pad(flat, padding=True, return_tensors="pt")
        return {**enc, "winners": torch.tensor(winners), "losers": torch.tensor(losers)}


class SpanCollator:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[dict]) -> dict:
        labels = [ex["labels"] for ex in batch]
        enc = self.tokenizer.pad([{k: v for k, v in ex.items() if k != "labels"} for ex in batch],
                                 padding=True, padding_side="right", return_tensors="pt")
        width = enc["input_ids"].shape[1]
        enc["labels"] = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        return dict(enc)


class SequenceCollator:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[dict]) -> dict:
        labels = torch.tensor([ex["labels"] for ex in batch], dtype=torch.float)
        enc = self.tokenizer.pad([{k: v for k, v in ex.items() if k != "labels"} for ex in batch],
                                 padding=True, return_tensors="pt")
        return {**enc, "labels": labels}


def _make_trainer_class():
    from transformers import Trainer

    class RMTrainer(Trainer):
        """Trainer with the reward-model losses; ``rm_kind`` picks one."""

        rm_kind: str = "holistic"
        class_weights: torch.Tensor | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            if self.rm_kind == "holistic":
                winners, losers = inputs.pop("winners"), inputs.pop("losers")
                outputs = model(**inputs)
                loss = bradley_terry_loss(outputs.logits[:, 0], winners, losers)
            elif self.rm_kind == "completeness":
                labels = inputs.pop("labels")
                outputs = model(**inputs)
                loss = F.binary_cross_entropy_with_logits(outputs.logits[:, 0], labels)
            else:
                labels = inputs.pop("labels")
                outputs = model(**inputs)
                weight = None if self.class_weights is None else self.class_weights.to(outputs.logits.device)
                loss = F.cross_entropy(outputs.logits.reshape(-1, outputs.logits.shape[-1]).float(),
                                       labels.reshape(-1), weight=weight, ignore_index=-100)
            return (loss, outputs) if return_outputs else loss

    return RMTrainer


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# ---------------------------------------------------------------------------------------------- training


def build_model(kind: str, backbone: str):
    """(model, tokenizer) with a fresh head for ``kind`` on ``backbone`` (safetensors only)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        if kind in SPAN_KINDS:
            model = AutoModelForTokenClassification.from_pretrained(
                backbone, num_labels=2, id2label={0: "clean", 1: "error"}, label2id={"clean": 0, "error": 1},
                use_safetensors=True)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise AlarmError(f"cannot load backbone {backbone!r} ({str(e).splitlines()[0]}); give a directory with "
                         "safetensors weights or a hub id this machine can reach") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def freeze_lower_layers(model, train_layers: int | None) -> int:
    """Freeze embeddings and all but the top ``train_layers`` encoder layers (pooler and head stay trainable).

    On 2 CPU cores this is what makes training take minutes: the backward pass stops at the first trained
    layer. Returns the number of trainable parameters.
    """
    import re

    if train_layers is not None:
        n_layers = model.config.num_hidden_layers
        keep = {str(i) for i in range(n_layers - train_layers, n_layers)}
        base = model.base_model
        matched = False
        for name, param in base.named_parameters():
            m = re.search(r"(?:^|\.)layers?\.(\d+)\.", name)
            matched |= m is not None
            param.requires_grad = bool(m and m.group(1) in keep) or "pooler" in name  # the pooler is head
        if not matched:
            raise AlarmError(f"cannot find the encoder layers of {type(model).__name__} to freeze; set "
                             "train_layers: null to train the whole backbone")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_examples(kind: str, records, tokenizer, max_length: int) -> list[dict]:
    if kind == "holistic":
        return holistic_examples(records, tokenizer, max_length)
    if kind == "completeness":
        return completeness_examples(records, tokenizer, max_length)
    return span_examples(records, tokenizer, kind, max_length)


def _fits(config: RMTrainConfig, tokenizer, r: FeedbackRecord) -> bool:
    prompt, answer = reward_prompt(r.question, r.passages), r.predictions[0]
    if config.kind not in SPAN_KINDS:
        return _pair_encode(tokenizer, prompt, answer, config.max_length) is not None
    try:
        build_span_inputs(tokenizer, prompt, answer, SPAN_KINDS[config.kind][0], max_length=config.max_length)
    except AlarmError:
        return False
    return True


def check_validation_fits(config: RMTrainConfig, val: list[FeedbackRecord], tokenizer) -> None:
    """Before training: the evaluation after it scores every validation answer of the span and completeness
    kinds, so an answer longer than ``max_length`` would fail only once training is done."""
    if config.kind == "holistic":  # the holistic evaluation skips (and counts) questions too long for the model
        return
    answers = [r for r in val if r.predictions[0].strip()]
    too_long = sum(not _fits(config, tokenizer, r) for r in answers)
    if too_long:
        raise AlarmError(f"{too_long} of {len(answers)} validation answers do not fit max_length={config.max_length} "
                         "tokens, and the evaluation after training scores every one; raise max_length")


def train_reward_model(config: RMTrainConfig, records: list[FeedbackRecord] | None = None, model=None,
                       tokenizer=None, evaluate: bool = True,
                       split: tuple[list[FeedbackRecord], list[FeedbackRecord]] | None = None,
                       featurizer: EvidenceFeaturizer | None = None) -> dict:
    """Train, save and (by default) evaluate one reward model. ``model``/``tokenizer`` override the backbone;
    ``split`` = (train, validation) records instead of the config's split; ``featurizer`` shares the evidence
    models' embedding cache between runs (cross-validation)."""
    from transformers import TrainingArguments, set_seed

    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed)
    if split is None:
        records = load_feedback(config.data) if records is None else records
        train, val = split_feedback(records, config.validation_fraction, config.seed)
    else:
        train, val = split
    if config.architecture == "grounding_features":
        return _train_grounding_bt(config, train, val, evaluate)
    if config.architecture == "evidence_features":
        return _train_evidence(config, train, val, evaluate, featurizer)
    backbone = config.backbone or minilm_path()
    if model is None:
        model, tokenizer = build_model(config.kind, backbone)
    if evaluate:
        check_validation_fits(config, val, tokenizer)
    trainable = freeze_lower_layers(model, config.train_layers)
    examples = make_examples(config.kind, train, tokenizer, config.max_length)
    if not examples:
        raise AlarmError(f"no training examples for kind {config.kind!r} in {len(train)} training questions")
    collator = {"holistic": HolisticCollator, "completeness": SequenceCollator}.get(config.kind, SpanCollator)(tokenizer)
    out = config.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs, learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio, logging_steps=10, save_strategy="no", report_to=[],
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), seed=config.seed,
        dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = _make_trainer_class()(model=model, args=args, train_dataset=_ListDataset(examples),
                                    data_collator=collator, processing_class=tokenizer)
    trainer.rm_kind = config.kind
    stats = {"kind": config.kind, "train_questions": len(train), "validation_questions": len(val),
             "train_examples": len(examples), "trainable_parameters": trainable}
    if config.kind in SPAN_KINDS:
        labels = [y for ex in examples for y in ex["labels"] if y != -100]
        pos = sum(labels)
        w = config.error_weight or (len(labels) - pos) / max(pos, 1)
        trainer.class_weights = torch.tensor([1.0, float(w)])
        stats.update(train_pieces=len(labels), train_error_rate=pos / len(labels), error_weight=float(w))
    elif config.kind == "holistic":
        stats["train_pairs"] = sum(len(ex["pairs"]) for ex in examples)
    t0 = time.perf_counter()
    result = trainer.train()
    stats["train_seconds"] = round(time.perf_counter() - t0, 1)
    stats["train_loss"] = result.training_loss
    stats["loss_history"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    save_reward_model(trainer.model, tokenizer, config, out, stats)
    if evaluate and val:
        stats["eval"] = evaluate_reward_model(out, val)
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def _train_grounding_bt(config: RMTrainConfig, train, val, evaluate: bool) -> dict:

    stats = {"kind": config.kind, "architecture": config.architecture, "train_questions": len(train),
             "validation_questions": len(val), **train_grounding_bt(config, train)}
    if evaluate and val:
        stats["eval"] = evaluate_reward_model(config.out_dir(), val)
    (config.out_dir() / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def _train_evidence(config: RMTrainConfig, train, val, evaluate: bool, featurizer) -> dict:
    featurizer = featurizer or EvidenceFeaturizer(config.backbone, config.max_evidence)
    stats = {"kind": config.kind, "architecture": config.architecture, "validation_questions": len(val),
             **train_evidence_model(config, train, featurizer)}
    if evaluate and val:
        stats["eval"] = evaluate_reward_model(config.out_dir(), val, featurizer=featurizer)
    (config.out_dir() / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def cross_validate(config: RMTrainConfig, folds: int = 5, records: list[FeedbackRecord] | None = None) -> dict:
    """k-fold cross-validation by question over every record: the number ``alarm rm evaluate --config`` reports.

    Each fold trains a fresh model on the other folds' questions (saved under ``<out>/fold-<k>``) and evaluates
    it, and the trivial baselines, on its own; returns per-fold results and mean ± std of each metric.
    """
    import random

    records = load_feedback(config.data) if records is None else list(records)
    if folds < 2 or folds > len(records):
        raise AlarmError(f"folds must be between 2 and the number of questions ({len(records)}), got {folds}")
    order = list(range(len(records)))
    random.Random(config.seed).shuffle(order)
    fold_of = {i: k % folds for k, i in enumerate(order)}
    featurizer = (EvidenceFeaturizer(config.backbone, config.max_evidence)
                  if config.architecture == "evidence_features" else None)
    out = config.out_dir()
    results = []
    for k in range(folds):
        train = [r for i, r in enumerate(records) if fold_of[i] != k]
        val = [r for i, r in enumerate(records) if fold_of[i] == k]
        fold_config = config.model_copy(update={"output_dir": str(out / f"fold-{k}")})
        stats = train_reward_model(fold_config, split=(train, val), featurizer=featurizer)
        results.append(stats["eval"])
    summary = {"kind": config.kind, "architecture": config.architecture, "folds": folds,
               "questions": len(records), "seed": config.seed, **summarize_folds(config.kind, results),
               "per_fold": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv.json").write_text(json.dumps(summary, indent=2))
    return summary


def save_reward_model(model, tokenizer, config: RMTrainConfig, out: Path, stats: dict) -> None:
    """safetensors weights + tokenizer (limit = the training max_length) + rm_config.json."""
    import shutil

    model.save_pretrained(out, safe_serialization=True)
    limit = tokenizer.model_max_length  # saved with the training length, the caller's tokenizer left as it was
    tokenizer.model_max_length = config.max_length
    try:
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.model_max_length = limit
    info = {"kind": config.kind, "config": config.model_dump(), "prompt_format": "alarm.data.qa_feedback.reward_prompt"}
    if config.kind in SPAN_KINDS:
        level, types, value = SPAN_KINDS[config.kind]
        info.update(level=level, error_types=list(types), value=value, error_label=1)
    (out / "rm_config.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out / "trainer", ignore_errors=True)
