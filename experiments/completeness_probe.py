"""Can the evidence features tell a complete answer from one that misses information? (QA-Feedback)

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/completeness_probe.py     # ≈ 3 min on one core

The selection ablation runs ALaRM on completeness only if a completeness model clears its trivial baseline
cross-validated; the MiniLM cross-encoder (`recipes/rm_completeness.yaml`) does not (ROC-AUC 0.448). This probe
tries the evidence features instead (`alarm.reward_models.evidence`: what a frozen MiniLM sees in every passage
sentence) on the missing-info annotations of the 320 *training* questions only (the 80 validation questions the
ablation evaluates on are never read). Label: `completeness_label` (1 = the annotators marked no missing answer
and no missing major auxiliary information on ``prediction 1``, the annotated answer).

Features of an answer (``ANSWER``): its length and sentences, how well its sentences cover the passage sentences
nearest the question (best cosine of each, the top 3 / top 5 / all, the share above 0.6), the content words it
shares with the 5 nearest passage sentences and with the question, its similarity to the question, and the
evidence model's mean support and word overlap of its sentences. Feature of the question (``QUESTION``): how many
passage sentences there are. A completeness *reward* has to rank answers to the same question, so it must clear
the baseline from the answer's features: a question-only feature gives every answer of a question the same value.

Each feature set: class-balanced logistic regression (scikit-learn defaults otherwise, nothing tuned), stratified
5-fold cross-validation repeated over 5 fold seeds (mean ROC-AUC), 95 % bootstrap interval over questions of the
first repetition's out-of-fold scores; the trivial baseline (majority class / a constant score) has AUC 0.5.
Writes experiments/results/completeness_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ANSWER = ("log_words", "sentences", "cover_top3", "cover_top5", "cover_all", "cover_share_over_0.6",
          "top5_word_overlap", "question_words_covered", "question_cos", "support_mean", "words_in_passages_mean")
QUESTION = ("passage_sentences",)
SETS = {"length only": ("log_words",), "answer features": ANSWER, "question only": QUESTION,
        "answer + question": ANSWER + QUESTION}


def features(featurizer, record) -> dict[str, float]:
    """One annotated answer's features (``ANSWER`` + ``QUESTION``)."""
    from alarm.reward_models.evidence import PIECE_FEATURES, _content

    answer = record.predictions[0]
    evidence = featurizer.evidence(record.passages)
    spans, x = featurizer.pieces(record.question, record.passages, answer, "sentence")
    emb = featurizer.embed(evidence + [answer[s:e] for s, e in spans] + [record.question])
    ev, pieces, q = emb[: len(evidence)].numpy(), emb[len(evidence): -1].numpy(), emb[-1].numpy()
    nearest = np.argsort(-(ev @ q))
    cover = (ev @ pieces.T).max(1) if len(pieces) else np.zeros(len(evidence))
    words = set(_content(answer))
    q_words = set(_content(record.question))
    top5 = [set(_content(evidence[j])) for j in nearest[:5]]
    f = PIECE_FEATURES.index
    def mean(a) -> float:
        return float(np.mean(a)) if len(a) else 0.0

    return {"log_words": float(np.log1p(len(answer.split()))), "sentences": float(len(spans)),
            "cover_top3": mean(cover[nearest[:3]]), "cover_top5": mean(cover[nearest[:5]]),
            "cover_all": mean(cover), "cover_share_over_0.6": mean(cover > 0.6),
            "top5_word_overlap": mean([len(w & words) / max(len(w), 1) for w in top5]),
            "question_words_covered": len(q_words & words) / max(len(q_words), 1),
            "question_cos": float(pieces.mean(0) @ q) if len(pieces) else 0.0,
            "support_mean": float(x[:, 0].mean()) if len(x) else 0.0,
            "words_in_passages_mean": float(x[:, f("words_in_passages")].mean()) if len(x) else 0.0,
            "passage_sentences": float(len(evidence))}


def _auc(y, scores) -> float:
    # sklearn's, not alarm.reward_models.evaluate.auc: that one is O(n²) in Python, too slow for 2000 draws
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, np.nan_to_num(scores)))


def cross_validated_auc(x: np.ndarray, y: np.ndarray, repeats: int = 5, folds: int = 5,
                        draws: int = 2000) -> dict:
    """Mean out-of-fold ROC-AUC over ``repeats`` fold seeds; a 95 % bootstrap interval over rows of the first
    one's (alarm's resampling, draws without both classes left out)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from alarm.evaluation.statistics import _percentile, _resample

    aucs, first = [], None
    for seed in range(repeats):
        oof = np.zeros(len(y))
        for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
            mean, std = x[tr].mean(0), np.maximum(x[tr].std(0), 1e-6)
            model = LogisticRegression(class_weight="balanced", max_iter=3000).fit((x[tr] - mean) / std, y[tr])
            oof[te] = model.decision_function((x[te] - mean) / std)
        aucs.append(_auc(y, oof))
        first = oof if first is None else first
    boot = [_auc(y[i], first[i]) for i in _resample(len(y), draws, 0) if 0 < y[i].sum() < len(i)]
    low, high = _percentile(np.asarray(boot), 0.95)
    return {"auc": float(np.mean(aucs)), "auc_repeats": [round(float(a), 4) for a in aucs],
            "low": low, "high": high, "clears_baseline": bool(low > 0.5)}


def probe(table: list[dict], y: np.ndarray) -> dict:
    out = {}
    for name, cols in SETS.items():
        x = np.nan_to_num(np.asarray([[row[c] for c in cols] for row in table], dtype=np.float64))
        out[name] = {"features": list(cols), **cross_validated_auc(x, y)}
    out["single features"] = {c: _auc(y, np.asarray([row[c] for row in table])) for c in ANSWER + QUESTION}
    return out


def markdown(result: dict) -> str:
    lines = ["# Completeness from the evidence features: cross-validated on the training questions", "",
             f"{result['questions']} training questions with a non-empty annotated answer ({100 * result['complete_rate']:.1f} % "
             "complete). Class-balanced logistic regression, stratified 5-fold CV × 5 fold seeds; 95 % bootstrap "
             "interval over questions. Trivial baseline: AUC 0.5.", "",
             "| features | ROC-AUC | 95 % interval | clears 0.5 |", "|---|---|---|---|"]
    for name in SETS:
        r = result["sets"][name]
        lines.append(f"| {name} ({len(r['features'])}) | {r['auc']:.3f} | [{r['low']:.3f}, {r['high']:.3f}] | "
                     + ("yes" if r["clears_baseline"] else "no") + " |")
    lines += ["", "Single features (AUC of the raw value; below 0.5: the lower, the more complete): "
              + ", ".join(f"{k} {v:.3f}" for k, v in result["sets"]["single features"].items()) + ".", "",
              result["verdict"]]
    return "\n".join(lines) + "\n"


def verdict(sets: dict) -> str:
    if sets["answer features"]["clears_baseline"]:
        return "The answer's evidence features clear the baseline: a completeness reward of this kind can rank answers."
    q = sets["answer + question"]
    return ("No completeness model: the answer's own features do not clear the baseline; "
            + (f"with the question's passage count the AUC is {q['auc']:.3f} [{q['low']:.3f}, {q['high']:.3f}], but "
               "that feature is the same for every answer to a question, so it cannot rank a policy's answers. "
               if q["clears_baseline"] else "")
            + "ALaRM on completeness is not run.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "qa_feedback"
                                          / "feedback.json"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    from alarm.data.qa_feedback import completeness_label, load_feedback, split_feedback
    from alarm.io import write_json_atomic, write_text_atomic
    from alarm.reward_models.evidence import EvidenceFeaturizer
    from alarm.rewards.embedding import load_encoder

    t0 = time.perf_counter()
    train, _ = split_feedback(load_feedback(args.data))  # the ablation's split: its 80 validation questions unread
    train = [r for r in train if r.predictions[0].strip()]
    featurizer = EvidenceFeaturizer(load_encoder(None), 200)
    table = [features(featurizer, r) for r in train]
    y = np.asarray([completeness_label(r) for r in train])
    sets = probe(table, y)
    result = {"questions": len(train), "complete_rate": float(y.mean()), "sets": sets, "verdict": verdict(sets),
              "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    write_json_atomic(out / "completeness_probe.json", result)
    write_text_atomic(out / "completeness_probe.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
