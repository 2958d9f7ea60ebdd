"""Reward models that read the evidence: linear models on what a frozen sentence encoder sees in *all* passages.

Why it exists: a 256-token MiniLM cross-encoder cannot see most of a QA-Feedback question's ~440 passage words,
and factuality is about grounding in them. A 2-core CPU cannot train a long-context model in minutes, so these
models read the passages piece by piece instead: every passage sentence, every answer sentence (or
sub-sentence) and the question are embedded by the frozen encoder (default: the offline all-MiniLM-L6-v2), and
each answer piece gets the features in ``PIECE_FEATURES`` — how well it is supported by its nearest passage
sentences, how many of its words, word pairs, numbers and names occur in the passages, how close it is to the
question and to the answer's earlier pieces (redundancy), where it sits.

- ``factuality`` / ``relevance`` (span kinds): logistic regression (class-balanced) per piece on those
  features, the decision threshold chosen by an inner cross-validation on the training questions only (the
  best error-class F1). As a reward it emits +value for a piece judged clean and −value for one judged
  erroneous, at the piece's end — the same dense reward ``SpanRewardModel`` gives.
- ``holistic``: Bradley–Terry on per-answer aggregates of the sentence features plus the error probabilities of
  a factuality model of this kind trained on the same questions (mean −log σ(s_preferred − s_other) + L2, the
  L2 strength chosen by inner cross-validation on the training questions).

Everything is fitted with scikit-learn in seconds once the embeddings exist; the weights are saved with
safetensors next to ``rm_config.json`` (architecture ``evidence_features``) and read back by
:class:`EvidenceReward` (recipe type ``evidence_model``), which receives the question as the prompt and the
``passages`` column.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import OrderedDict

import numpy as np
import torch

from alarm.errors import AlarmError
from alarm.reward_models.grounding_bt import read_linear_model
from alarm.rewards.base import Dense, check_batch, require_column
from alarm.rewards.embedding import _resolve_encoder, _texts, load_encoder
from alarm.text import sentence_spans, subsentence_spans

ARCHITECTURE = "evidence_features"
PIECE_FEATURES = (
    "evidence_max_cos", "evidence_top3_cos", "question_cos", "words_in_passages", "word_pairs_in_passages",
    "numbers_in_passages", "numbers", "names_in_passages", "question_words_covered", "earlier_max_cos",
    "earlier_word_overlap", "position", "relative_position", "pieces", "log_words",
)
ANSWER_FEATURES = (
    "log_words", "sentences", "evidence_max_cos_mean", "evidence_max_cos_min", "words_in_passages_mean",
    "words_in_passages_min", "word_pairs_in_passages_mean", "question_cos_mean", "earlier_max_cos_max",
    "factuality_error_sum", "factuality_error_mean", "factuality_error_max",
)
_STOP = frozenset((
    "the", "a", "an", "of", "in", "on", "at", "to", "and", "or", "is", "was", "were", "be", "by", "for",
    "with", "as", "that", "this", "it", "its", "from", "are", "which", "who", "has", "had", "have",
    "their", "his", "her", "he", "she", "they", "also",
))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _content(text: str) -> list[str]:
    return [w for w in _words(text) if w not in _STOP]


def _share(items, pool, empty: float) -> float:
    items = list(items)
    return sum(x in pool for x in items) / len(items) if items else empty


def piece_spans(text: str, level: str) -> list[tuple[int, int]]:
    """The pieces a span kind labels: alarm.text's split, the one ``error_labels`` uses."""
    if not text.strip():
        return []
    return sentence_spans(text) if level == "sentence" else subsentence_spans(text)


class EmbeddingCache:
    """Unit-norm embeddings by text, so a passage read once is not encoded again (bounded, least recent out)."""

    def __init__(self, encoder, max_items: int = 50_000):
        self.encoder, self.max_items = encoder, max_items
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        todo = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if todo:
            emb = self.encoder.encode(todo, convert_to_tensor=True, normalize_embeddings=True, batch_size=64,
                                      show_progress_bar=False)
            for t, e in zip(todo, emb.float().cpu()):
                self._rows[t] = e
        for t in texts:
            self._rows.move_to_end(t)
        while len(self._rows) > self.max_items:
            self._rows.popitem(last=False)
        if texts:
            return torch.stack([self._rows[t] for t in texts])
        dim = getattr(self.encoder, "get_embedding_dimension", None) or self.encoder.get_sentence_embedding_dimension
        return torch.zeros(0, dim())


def evidence_sentences(passages, max_evidence: int) -> list[str]:
    texts = _texts("evidence", "passages", passages, 0)
    return [t[s:e] for t in texts for s, e in sentence_spans(t) if t[s:e].strip()][:max_evidence]


def piece_features(embed: EmbeddingCache, question: str, evidence: list[str], pieces: list[str]) -> np.ndarray:
    """[len(pieces), len(PIECE_FEATURES)] features of an answer's pieces against the passages' sentences."""
    if not pieces:
        return np.zeros((0, len(PIECE_FEATURES)))
    emb = embed(evidence + pieces + [question])
    ev, pe, q = emb[: len(evidence)], emb[len(evidence) : -1], emb[-1]
    joined = " ".join(evidence)
    ev_words = set(_words(joined))
    w = _words(joined)
    ev_pairs = set(zip(w, w[1:]))
    ev_numbers = set(re.findall(r"\d+", joined))
    q_words = set(_content(question))
    sims = (pe @ ev.T).numpy() if evidence else np.zeros((len(pieces), 1))
    earlier = (pe @ pe.T).numpy()
    rows = []
    for i, piece in enumerate(pieces):
        c, words = _content(piece), _words(piece)
        top = np.sort(sims[i])[::-1]
        numbers = re.findall(r"\d+", piece)
        names = [x.lower() for x in re.findall(r"\b[A-Z][a-z]+", piece)][1:]
        prev_overlap = max((len(set(c) & set(_content(pieces[j]))) / max(len(set(c)), 1) for j in range(i)),
                           default=0.0)
        rows.append([
            top[0], top[:3].mean(), float(pe[i] @ q), _share(c, ev_words, 1.0),
            _share(zip(words, words[1:]), ev_pairs, 1.0), _share(numbers, ev_numbers, 1.0), len(numbers),
            _share(names, ev_words, 1.0), len(q_words & set(c)) / max(len(q_words), 1),
            earlier[i, :i].max() if i else 0.0, prev_overlap, i, i / len(pieces), len(pieces),
            math.log1p(len(words)),
        ])
    return np.asarray(rows, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- linear models


class LinearModel:
    """s = w · (f − μ) / σ + b; saved as safetensors tensors under a prefix."""

    def __init__(self, weight, bias: float, mean, std, threshold: float = 0.5):
        self.weight, self.bias = np.asarray(weight, dtype=np.float64), float(bias)
        self.mean, self.std, self.threshold = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64), threshold

    def score(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std) @ self.weight + self.bias if len(x) else np.zeros(0)

    def probability(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.score(x)))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": torch.tensor(self.weight), f"{prefix}.mean": torch.tensor(self.mean),
                f"{prefix}.std": torch.tensor(self.std),
                f"{prefix}.bias_threshold": torch.tensor([self.bias, self.threshold], dtype=torch.float64)}

    @classmethod
    def from_tensors(cls, t: dict, prefix: str) -> LinearModel:
        try:
            bias, threshold = t[f"{prefix}.bias_threshold"].tolist()
            return cls(t[f"{prefix}.weight"].numpy(), bias, t[f"{prefix}.mean"].numpy(), t[f"{prefix}.std"].numpy(),
                       threshold)
        except KeyError as e:
            raise AlarmError(f"the evidence model's weights have no {e.args[0]!r}; the file does not match its "
                             "rm_config.json — retrain it with `alarm rm train`") from None


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.maximum(x.std(0), 1e-6)


def fit_piece_classifier(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0,
                         inner_folds: int = 4) -> LinearModel:
    """Class-balanced logistic regression; threshold = best F1 on inner out-of-fold predictions (by question),
    the middle of the best thresholds when several tie (separable data would otherwise get the grid's edge)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GroupKFold

    if len(set(y.tolist())) < 2:
        raise AlarmError("the training pieces are all of one class; use more questions")

    def fit(xs, ys):
        mean, std = _standardise(xs)
        m = LogisticRegression(class_weight="balanced", max_iter=3000, random_state=seed).fit((xs - mean) / std, ys)
        return LinearModel(m.coef_[0], m.intercept_[0], mean, std)

    out_of_fold = np.zeros(len(y))
    folds = min(inner_folds, len(set(groups.tolist())))
    for tr, te in GroupKFold(folds).split(x, y, groups):
        out_of_fold[te] = fit(x[tr], y[tr]).probability(x[te])
    grid = np.linspace(0.05, 0.95, 91)
    f1 = np.array([f1_score(y, out_of_fold >= t) for t in grid])
    model = fit(x, y)
    model.threshold = float(np.median(grid[f1 >= f1.max() - 1e-12]))  # the middle of the best plateau
    return model


def fit_bradley_terry(features: list[np.ndarray], pairs: list[list[tuple[int, int]]], seed: int = 0,
                      grid=(0.001, 0.01, 0.1, 1.0), inner_folds: int = 4) -> tuple[LinearModel, float]:
    """Linear Bradley–Terry score on per-answer features ([4, F] per question), L2 chosen by inner CV.

    Fitted as a logistic regression without intercept on the differences f_preferred − f_other (and their
    negatives), which is exactly mean −log σ(w·d) + L2. Returns the model and the chosen inverse strength C.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    mean, std = _standardise(np.concatenate(features))
    z = [(f - mean) / std for f in features]
    questions = [i for i, p in enumerate(pairs) if p]
    if not questions:
        raise AlarmError("no decisive preference pairs in the training questions")

    def fit(idx, c):
        d = np.asarray([z[i][w] - z[i][lo] for i in idx for w, lo in pairs[i]])
        x, y = np.concatenate([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))]
        return LogisticRegression(C=c, fit_intercept=False, max_iter=3000, random_state=seed).fit(x, y).coef_[0]

    def accuracy(w, idx):
        right = [np.sign(z[i][a] @ w - z[i][b] @ w) for i in idx for a, b in pairs[i]]
        return np.mean([(r + 1) / 2 for r in right])

    folds = list(KFold(min(inner_folds, len(questions)), shuffle=True, random_state=seed).split(questions))
    best = max(grid, key=lambda c: np.mean([accuracy(fit([questions[k] for k in tr], c), [questions[k] for k in te])
                                            for tr, te in folds]))
    return LinearModel(fit(questions, best), 0.0, mean, std), float(best)


# ---------------------------------------------------------------------------------------------- features of records


class EvidenceFeaturizer:
    """Features of (question, passages, answer) triples; one embedding cache for all of them."""

    def __init__(self, encoder=None, max_evidence: int = 200):
        self.embed = EmbeddingCache(_resolve_encoder(encoder))
        self.max_evidence = max_evidence
        self._evidence: OrderedDict[tuple[str, ...], list[str]] = OrderedDict()  # sentence splitting is slow

    def evidence(self, passages) -> list[str]:
        key = tuple(_texts("evidence", "passages", passages, 0))
        if key not in self._evidence:
            self._evidence[key] = evidence_sentences(list(key), self.max_evidence)
            if len(self._evidence) > 4096:
                self._evidence.popitem(last=False)
        return self._evidence[key]

    def embed_batch(self, questions, passages, answers, level: str) -> None:
        """Encode every text a batch needs in one encoder call (then each item reads the cache)."""
        texts = [t for q, ps, a in zip(questions, passages, answers)
                 for t in (*self.evidence(ps), *(a[s:e] for s, e in piece_spans(a, level)), q)]
        self.embed(texts)

    def pieces(self, question: str, passages, answer: str, level: str) -> tuple[list[tuple[int, int]], np.ndarray]:
        spans = piece_spans(answer, level)
        return spans, piece_features(self.embed, question, self.evidence(passages), [answer[s:e] for s, e in spans])

    def answer(self, question: str, passages, answer: str, factuality: LinearModel) -> np.ndarray:
        _, x = self.pieces(question, passages, answer, "sentence")
        return answer_features(x, factuality, answer)


def answer_features(x: np.ndarray, factuality: LinearModel, answer: str) -> np.ndarray:
    """[len(ANSWER_FEATURES)] aggregates of an answer's sentence features (zeros but length for an empty one)."""
    out = np.zeros(len(ANSWER_FEATURES))
    out[0] = math.log1p(len(answer.split()))
    if not len(x):
        return out
    p = factuality.probability(x)
    f = PIECE_FEATURES.index
    out[1:] = [len(x), x[:, 0].mean(), x[:, 0].min(), x[:, f("words_in_passages")].mean(),
               x[:, f("words_in_passages")].min(), x[:, f("word_pairs_in_passages")].mean(),
               x[:, f("question_cos")].mean(), x[:, f("earlier_max_cos")].max(), p.sum(), p.mean(), p.max()]
    return out


# ---------------------------------------------------------------------------------------------- training


def span_training_set(featurizer: EvidenceFeaturizer, records, types, level: str):
    """(x, y, question index) over the pieces of each record's ``prediction 1`` (the annotated one)."""
    from alarm.data.qa_feedback import error_labels

    xs, ys, gs = [], [], []
    for qi, r in enumerate(records):
        answer = r.predictions[0]
        _, x = featurizer.pieces(r.question, r.passages, answer, level)
        if not len(x):
            continue
        xs.append(x)
        ys += error_labels(answer, r.errors, types, level)
        gs += [qi] * len(x)
    if not xs:
        raise AlarmError(f"no annotated answers in {len(records)} training questions")
    return np.concatenate(xs), np.asarray(ys), np.asarray(gs)


def train_evidence_model(config, records, featurizer: EvidenceFeaturizer | None = None) -> dict:
    """Fit one evidence model of ``config.kind`` on ``records``, save it under ``config.out_dir()``; stats."""
    from safetensors.torch import save_file

    from alarm.data.qa_feedback import FACTUALITY_ERRORS, RELEVANCE_ERRORS

    t0 = time.perf_counter()
    featurizer = featurizer or EvidenceFeaturizer(load_encoder(config.backbone), config.max_evidence)
    kinds = {"factuality": ("sentence", FACTUALITY_ERRORS, 0.5), "relevance": ("subsentence", RELEVANCE_ERRORS, 0.3)}
    x, y, g = span_training_set(featurizer, records, FACTUALITY_ERRORS, "sentence") if config.kind in (
        "holistic", "factuality") else span_training_set(featurizer, records, kinds["relevance"][1], "subsentence")
    if config.kind == "holistic" and len(set(y.tolist())) < 2:  # no factuality annotations: a constant sub-model
        rate = min(max(float(y.mean()), 1e-3), 1 - 1e-3)
        pieces = LinearModel(np.zeros(x.shape[1]), math.log(rate / (1 - rate)), *_standardise(x))
    else:
        pieces = fit_piece_classifier(x, y, g, seed=config.seed)
    info = {"kind": config.kind, "architecture": ARCHITECTURE, "config": config.model_dump(),
            "encoder": config.backbone, "max_evidence": config.max_evidence, "piece_features": list(PIECE_FEATURES)}
    stats = {"train_questions": len(records), "train_pieces": len(y), "train_error_rate": float(y.mean())}
    if config.kind == "holistic":
        feats = [np.stack([featurizer.answer(r.question, r.passages, p, pieces) for p in r.predictions])
                 for r in records]
        score, c = fit_bradley_terry(feats, [r.pairs() for r in records], seed=config.seed)
        tensors = {**pieces.tensors("factuality"), **score.tensors("holistic")}
        info["answer_features"] = list(ANSWER_FEATURES)
        stats.update(train_pairs=sum(len(r.pairs()) for r in records), l2_inverse_strength=c,
                     weights=dict(zip(ANSWER_FEATURES, np.round(score.weight, 4).tolist())))
    else:
        level, types, value = kinds[config.kind]
        tensors = pieces.tensors(config.kind)
        info.update(level=level, error_types=list(types), value=value)
        stats.update(threshold=pieces.threshold)
    out = config.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    (out / "rm_config.json").write_text(json.dumps(info, indent=2))
    stats["train_seconds"] = round(time.perf_counter() - t0, 1)
    return stats


# ---------------------------------------------------------------------------------------------- the reward


class EvidenceReward:
    """A saved evidence model as a reward: dense ±value per piece (span kinds) or a holistic score per answer.

    Receives the question as the prompt and the passages in ``column``: by default ``evidence``, every passage
    uncut, as QA-Feedback policy records carry it (``alarm.data.qa_feedback.paper_records``) — the models were
    trained and cross-validated on whole passages; the ``passages`` column holds only what fit the policy's prompt.
    """

    higher_is_better = True

    def __init__(self, path: str, column: str = "evidence", name: str | None = None, encoder=None,
                 featurizer: EvidenceFeaturizer | None = None):
        info, tensors = read_linear_model(path, ARCHITECTURE, "an evidence-features model",
                                          "recipes/rm_<kind>_evidence.yaml", "use its own reward type")
        if info.get("piece_features") != list(PIECE_FEATURES):
            raise AlarmError(f"{path} was trained on other features than this version computes; retrain it")
        self.kind = info["kind"]
        self.name = name or self.kind
        self.column = column
        self.featurizer = featurizer or EvidenceFeaturizer(encoder if encoder is not None else info.get("encoder"),
                                                           int(info["max_evidence"]))
        if self.kind == "holistic":
            self.factuality = LinearModel.from_tensors(tensors, "factuality")
            self.score = LinearModel.from_tensors(tensors, "holistic")
            self.dense = False
        else:
            self.pieces = LinearModel.from_tensors(tensors, self.kind)
            self.level, self.value = info["level"], float(info["value"])
            self.dense = True

    def __call__(self, prompts, completions, **columns) -> list:
        check_batch(self.name, prompts, completions)
        passages = require_column(self.name, self.column, columns, len(completions))
        self.featurizer.embed_batch(prompts, passages, completions, "sentence" if self.kind == "holistic" else self.level)
        out = []
        for q, ps, c in zip(prompts, passages, completions):
            if self.kind == "holistic":
                out.append(float(self.score.score(self.featurizer.answer(q, ps, c, self.factuality)[None])[0]))
                continue
            spans, x = self.featurizer.pieces(q, ps, c, self.level)
            error = self.pieces.probability(x) >= self.pieces.threshold
            out.append(Dense(points=tuple((end, -self.value if e else self.value) for (_, end), e in zip(spans, error)),
                             level=self.level))
        return out
