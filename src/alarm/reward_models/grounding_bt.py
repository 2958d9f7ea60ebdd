"""A holistic reward model a 2-core CPU can train: Bradley–Terry on grounding features of a frozen encoder.

Why it exists: the 4 answers to a QA-Feedback question share most of their sentences, and a MiniLM
cross-encoder fine-tuned with the Bradley–Terry loss stays at ln 2 on them (held-out pairwise accuracy ≤ 0.528
against 0.531 for "longer is better"; issue 5). What does separate the answers people preferred is mostly
grounding — how well each sentence is supported by the passages — which a 256-token cross-encoder cuts away.

This model embeds every answer sentence, every passage sentence and the question with a frozen sentence encoder
(default: the offline all-MiniLM-L6-v2), computes the features in ``FEATURES`` and learns a linear score
s = w · (f − μ) / σ by minimising mean −log σ(s_preferred − s_other) + λ‖w‖² (L-BFGS, seconds). It is saved as
``model.safetensors`` (w, μ, σ) plus ``rm_config.json`` and used as a reward through :class:`GroundingBTReward`
(recipe type ``grounding_bt``), which reads the question as the prompt and the ``passages`` column.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alarm.errors import AlarmError
from alarm.rewards.base import check_batch, require_column
from alarm.rewards.embedding import _embed, _resolve_encoder, _texts, load_encoder
from alarm.text import sentence_spans

ARCHITECTURE = "grounding_features"
FEATURES = ("log_words", "sentences", "grounding_mean", "grounding_min", "grounded_fraction", "question_mean",
            "question_min")


def _sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


def features(encoder, questions: list[str], passages: list, responses: list[str], max_evidence: int = 80,
             grounded_at: float = 0.8) -> torch.Tensor:
    """[N, len(FEATURES)] features of each (question, passages, response); one encoder call for the batch."""

    evidence = [[s for t in _texts("holistic", "passages", ps, i) for s in _sentences(t)][:max_evidence]
                for i, ps in enumerate(passages)]
    pieces = [_sentences(r) for r in responses]
    rows, emb = _embed(encoder, [s for ps in pieces for s in ps] + [s for ev in evidence for s in ev] + list(questions))
    out = torch.zeros(len(responses), len(FEATURES))
    for i, (q, ev, ps, r) in enumerate(zip(questions, evidence, pieces, responses)):
        out[i, 0] = math.log1p(len(r.split()))
        out[i, 1] = len(ps)
        if not ps:
            continue
        sent = emb[[rows[s] for s in ps]].float().cpu()
        if ev:
            best = (sent @ emb[[rows[s] for s in ev]].float().cpu().T).max(dim=1).values
            out[i, 2:5] = torch.stack([best.mean(), best.min(), (best >= grounded_at).float().mean()])
        to_q = sent @ emb[rows[q]].float().cpu()
        out[i, 5:7] = torch.stack([to_q.mean(), to_q.min()])
    return out


def fit_bradley_terry(diffs: torch.Tensor, l2: float, steps: int = 200) -> torch.Tensor:
    """w minimising mean −log σ(w·d) + l2·‖w‖² over the rows d = f_preferred − f_other (already scaled)."""
    w = torch.zeros(diffs.shape[1], dtype=torch.float64, requires_grad=True)
    d = diffs.double()
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -F.logsigmoid(d @ w).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()


def record_features(encoder, records, config) -> list[torch.Tensor]:
    """[4, F] features of each QA-Feedback record's four predictions (16 records per encoder call)."""
    out = []
    for i in range(0, len(records), 16):
        chunk = records[i : i + 16]
        f = features(encoder, [r.question for r in chunk for _ in range(4)], [r.passages for r in chunk for _ in range(4)],
                     [p for r in chunk for p in r.predictions], config.max_evidence, config.grounded_at)
        out += list(f.view(len(chunk), 4, -1))
    return out


def train_grounding_bt(config, train_records) -> dict:
    """Fit, save (safetensors + rm_config.json) and return training stats."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    encoder = load_encoder(config.backbone)
    feats = record_features(encoder, train_records, config)
    pairs = [(f[w], f[lo]) for f, r in zip(feats, train_records) for w, lo in r.pairs()]
    if not pairs:
        raise AlarmError(f"no decisive preference pairs in {len(train_records)} training questions")
    every = torch.cat(feats)
    mean, std = every.mean(0), every.std(0).clamp(min=1e-6)
    diffs = torch.stack([(a - b) / std for a, b in pairs])
    w = fit_bradley_terry(diffs, config.weight_decay)
    out = config.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    save_file({"weight": w.contiguous(), "mean": mean.contiguous(), "std": std.contiguous()},
              str(out / "model.safetensors"))
    info = {"kind": "holistic", "architecture": ARCHITECTURE, "config": config.model_dump(), "features": list(FEATURES),
            "encoder": config.backbone, "max_evidence": config.max_evidence, "grounded_at": config.grounded_at}
    (out / "rm_config.json").write_text(json.dumps(info, indent=2))
    train_acc = float(((diffs @ w) > 0).float().mean())
    return {"train_pairs": len(pairs), "train_pairwise_accuracy": train_acc,
            "weights": dict(zip(FEATURES, [round(float(x), 4) for x in w])),
            "train_seconds": round(time.perf_counter() - t0, 1)}


def read_linear_model(path: str, architecture: str, what: str, recipe: str, otherwise: str) -> tuple[dict, dict]:
    """(rm_config.json, safetensors tensors) of a saved feature-based model, with one-line errors naming the fix."""
    from safetensors.torch import load_file

    root = Path(path)
    info_path = root / "rm_config.json"
    if not info_path.exists():
        raise AlarmError(f"{root} has no rm_config.json; train one with `alarm rm train --config {recipe}`")
    info = json.loads(info_path.read_text())
    if info.get("architecture") != architecture:
        raise AlarmError(f"{root} is not {what} (architecture {info.get('architecture', 'cross_encoder')!r}); {otherwise}")
    if not (root / "model.safetensors").exists():
        raise AlarmError(f"{root} has no model.safetensors; retrain it with `alarm rm train --config {recipe}`")
    return info, load_file(str(root / "model.safetensors"))


class GroundingBTReward:
    """The trained grounding-features model as a sequence-level reward: prompts are the questions."""

    higher_is_better = True
    dense = False

    def __init__(self, path: str, column: str = "passages", name: str = "holistic", encoder=None):
        info, tensors = read_linear_model(path, ARCHITECTURE, "a grounding-features model", "recipes/rm_holistic.yaml",
                                          "use type sequence_classifier for it")
        self.weight, self.mean, self.std = tensors["weight"], tensors["mean"], tensors["std"]
        self.encoder = _resolve_encoder(encoder if encoder is not None else info.get("encoder"))
        self.max_evidence, self.grounded_at = int(info["max_evidence"]), float(info["grounded_at"])
        self.column, self.name = column, name

    def __call__(self, prompts, completions, **columns) -> list[float]:
        check_batch(self.name, prompts, completions)
        passages = require_column(self.name, self.column, columns, len(completions))
        f = features(self.encoder, list(prompts), list(passages), list(completions), self.max_evidence,
                     self.grounded_at)
        return (((f - self.mean) / self.std) @ self.weight).tolist()
