"""Held-out quality of the QA-Feedback reward models, against trivial baselines (printed and saved as JSON).

- holistic: pairwise accuracy on the validation questions' decisive preferences vs "longer is better"
  (a length tie counts one half);
- factuality / relevance: per-(sub-)sentence precision, recall, F1 of the *erroneous* class vs "always clean"
  (F1 0) and "always error" (recall 1, precision = the error rate). Scored through ``SpanRewardModel``, so
  what is measured is the reward the policy will get;
- completeness: accuracy and ROC-AUC vs the majority class.
"""

from __future__ import annotations

import json
from pathlib import Path

from alarm.data.qa_feedback import (
    FeedbackRecord,
    PassagePrompt,
    completeness_label,
    error_labels,
    load_feedback,
    split_feedback,
)
from alarm.errors import AlarmError
from alarm.reward_models.evidence import ARCHITECTURE as EVIDENCE
from alarm.reward_models.evidence import EvidenceReward
from alarm.reward_models.grounding_bt import GroundingBTReward
from alarm.rewards.hf_models import SequenceClassifierReward, SpanRewardModel


def prf(pred: list[int], gold: list[int]) -> dict:
    """Precision / recall / F1 of class 1 (precision 0 when nothing is predicted positive)."""
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def pairwise_accuracy(scores: list[list[float]], records: list[FeedbackRecord]) -> tuple[float, int]:
    right = n = 0.0
    for s, r in zip(scores, records):
        for w, lo in r.pairs():
            n += 1
            right += 1.0 if s[w] > s[lo] else 0.5 if s[w] == s[lo] else 0.0
    return (right / n if n else float("nan")), int(n)


def auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


def _fits(reward, text: str) -> bool:
    tok = reward.tokenizer
    return len(tok(text, add_special_tokens=False)["input_ids"]) + tok.num_special_tokens_to_add(pair=True) < reward.max_length


def _passage_columns(passages: list) -> dict:
    """The columns a policy record carries (alarm.data.qa_feedback.paper_records), here with every passage in
    both: ``passages`` (what fit the policy prompt) and ``evidence`` (every passage, what evidence models read)."""
    return {"passages": passages, "evidence": passages}


def evaluate_holistic(reward, records: list[FeedbackRecord]) -> dict:
    """Pairwise accuracy of a reward that reads the question plus a ``passages`` column (``load_reward``);
    with a cross-encoder, questions with a response longer than it reads are skipped (and counted)."""
    n_all = len(records)
    model = getattr(reward, "reward", reward)  # PassagePrompt wraps the cross-encoder
    if hasattr(model, "tokenizer"):
        records = [r for r in records if all(_fits(model, p) for p in r.predictions)]
    flat = reward([r.question for r in records for _ in range(4)], [p for r in records for p in r.predictions],
                  **_passage_columns([r.passages for r in records for _ in range(4)]))
    scores = [flat[4 * i : 4 * i + 4] for i in range(len(records))]
    acc, n = pairwise_accuracy(scores, records)
    base, _ = pairwise_accuracy([[float(len(p)) for p in r.predictions] for r in records], records)
    return {"pairs": n, "pairwise_accuracy": acc, "baseline_longer_is_better": base,
            "skipped_questions_too_long": n_all - len(records)}


def evaluate_span(reward, records: list[FeedbackRecord], types, level: str) -> dict:
    """Error-class P/R/F1 of a reward that reads the question plus a ``passages`` column (``load_reward``)."""
    records = [r for r in records if r.predictions[0].strip()]
    dense = reward([r.question for r in records], [r.predictions[0] for r in records],
                   **_passage_columns([r.passages for r in records]))
    pred, gold = [], []
    for r, d in zip(records, dense):
        labels = error_labels(r.predictions[0], r.errors, types, level)
        values = [v for _, v in d.points]
        if len(values) != len(labels):
            raise AlarmError(f"question {r.question[:60]!r}: the reward split the answer into {len(values)} pieces, "
                             f"the labels into {len(labels)}")
        pred += [int(v < 0) for v in values]
        gold += labels
    rate = sum(gold) / len(gold) if gold else 0.0
    return {"pieces": len(gold), "error_rate": rate, "model": prf(pred, gold),
            "baseline_always_clean": prf([0] * len(gold), gold), "baseline_always_error": prf([1] * len(gold), gold),
            "predicted_error_rate": sum(pred) / len(pred) if pred else 0.0}


def evaluate_completeness(reward, records: list[FeedbackRecord]) -> dict:
    records = [r for r in records if r.predictions[0].strip()]
    scores = reward([r.question for r in records], [r.predictions[0] for r in records],
                    **_passage_columns([r.passages for r in records]))
    labels = [completeness_label(r) for r in records]
    majority = int(sum(labels) * 2 >= len(labels))
    acc = sum(int(s > 0) == y for s, y in zip(scores, labels)) / len(labels)
    return {"examples": len(labels), "complete_rate": sum(labels) / len(labels), "accuracy": acc,
            "auc": auc(scores, labels), "baseline_majority_accuracy": sum(y == majority for y in labels) / len(labels)}


def load_reward(model_dir: str | Path, info: dict, featurizer=None):
    """The saved model as a reward that reads the question as the prompt and a ``passages`` column, whatever
    its architecture (the cross-encoders get ``reward_prompt(question, passages)`` through PassagePrompt)."""

    if info.get("architecture") == "grounding_features":
        return GroundingBTReward(str(model_dir), name=info["kind"])
    if info.get("architecture") == EVIDENCE:
        return EvidenceReward(str(model_dir), name=info["kind"], featurizer=featurizer)
    if info["kind"] in ("factuality", "relevance"):
        return PassagePrompt(SpanRewardModel.from_pretrained(str(model_dir), level=info["level"], value=info["value"],
                                                             batch_size=16, name=info["kind"]))
    return PassagePrompt(SequenceClassifierReward.from_pretrained(str(model_dir), batch_size=16, name=info["kind"]))


# (metric, baseline) pairs reported per kind: the model's number beside the trivial one it must beat
CV_METRICS = {
    "holistic": {"pairwise_accuracy": ("pairwise_accuracy",), "longer_is_better": ("baseline_longer_is_better",)},
    "factuality": {"error_f1": ("model", "f1"), "always_error_f1": ("baseline_always_error", "f1"),
                   "always_clean_f1": ("baseline_always_clean", "f1"), "error_precision": ("model", "precision"),
                   "error_recall": ("model", "recall")},
    "completeness": {"accuracy": ("accuracy",), "auc": ("auc",), "majority_accuracy": ("baseline_majority_accuracy",)},
}
CV_METRICS["relevance"] = CV_METRICS["factuality"]


def summarize_folds(kind: str, results: list[dict]) -> dict:
    """mean and std (population, over folds) of each of the kind's metrics: {"metrics": {name: {mean, std, folds}}}."""
    import statistics

    out = {}
    for name, keys in CV_METRICS[kind].items():
        values = []
        for r in results:
            v = r
            for k in keys:
                v = v[k]
            values.append(float(v))
        out[name] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "folds": values}
    return {"metrics": out}


def format_cv(summary: dict) -> str:
    m = summary["metrics"]
    cell = "  ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in m.items())
    return f"{summary['kind']} ({summary['architecture']}, {summary['folds']}-fold CV by question over {summary['questions']} questions): {cell}"


def evaluate_reward_model(model_dir: str | Path, records: list[FeedbackRecord] | None = None,
                          data: str | None = None, featurizer=None) -> dict:
    """Score the validation questions (the training split's complement), print and save ``eval.json``."""
    model_dir = Path(model_dir)
    info_path = model_dir / "rm_config.json"
    if not info_path.exists():
        raise AlarmError(f"{model_dir} has no rm_config.json; give a directory written by `alarm rm train`")
    info = json.loads(info_path.read_text())
    config = info["config"]
    if records is None:
        _, records = split_feedback(load_feedback(data or config["data"]), config.get("validation_fraction", 0.2),
                                    config.get("seed", 42))
    reward = load_reward(model_dir, info, featurizer)
    kind = info["kind"]
    if kind == "holistic":
        result = evaluate_holistic(reward, records)
        line = (f"holistic: pairwise accuracy {result['pairwise_accuracy']:.3f} on {result['pairs']} held-out pairs "
                f"(longer-is-better {result['baseline_longer_is_better']:.3f})")
    elif kind == "completeness":
        result = evaluate_completeness(reward, records)
        line = (f"completeness: accuracy {result['accuracy']:.3f}, AUC {result['auc']:.3f} on {result['examples']} "
                f"held-out answers (majority class {result['baseline_majority_accuracy']:.3f})")
    else:
        result = evaluate_span(reward, records, info["error_types"], info["level"])
        m, c, e = result["model"], result["baseline_always_clean"], result["baseline_always_error"]
        line = (f"{kind}: error-class P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} on "
                f"{result['pieces']} held-out {info['level']}s (error rate {result['error_rate']:.3f}); "
                f"always-clean F1 {c['f1']:.3f}, always-error F1 {e['f1']:.3f}")
    result = {"kind": kind, "validation_questions": len(records), **result}
    (model_dir / "eval.json").write_text(json.dumps(result, indent=2))
    print(line)
    return result
