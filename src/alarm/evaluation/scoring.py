"""Generation and scored files — the format every evaluation command and a run's own evaluation share.

File formats (JSONL, one object per line):
- **generations**: ``{"prompt_id", "sample", "prompt", "completion", ...the prompt record's other columns}``;
  a sidecar ``<file>.meta.json`` records how they were made (policy, decoding) so a resume cannot mix settings.
- **scored generations**: the same records plus ``"scores": {metric: value}``. Sequence rewards give ``<name>``
  (raw) and ``<name>.z`` (normalised, when normalisers are given or fitted); dense rewards are summarised per
  response as ``<name>.mean_emitted`` (mean of the values it emitted) and ``<name>.share_positive`` (share of
  those values > 0). The sidecar names each metric's direction (higher or lower is better).

Rewards receive what training gives them (:func:`alarm.data.prompts.reward_inputs`): the plain question as the
prompt, never the chat-formatted policy input, so `alarm score` and training score the same thing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from alarm.data.prompts import qa_prompt_records, reward_inputs
from alarm.errors import AlarmError
from alarm.io import jsonl_lines, read_jsonl, read_text
from alarm.progress import Progress
from alarm.rewards.base import Dense, is_dense, summarize_dense
from alarm.rewards.normalize import Normalizer, load_normalizers

RESERVED = ("prompt_id", "sample", "prompt", "completion", "scores")


def meta_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".meta.json")


def generation_rows(records: list[dict], completions: list[list[str]]) -> list[dict]:
    """Generation-file rows: one per (prompt record, sample), with the record's columns."""
    return [{"prompt_id": r["id"], "sample": k, "prompt": r["prompt"], "completion": c,
             **{key: v for key, v in r.items() if key not in ("id", "prompt")}}
            for r, texts in zip(records, completions) for k, c in enumerate(texts)]


def load_prompt_set(path: str | None, tokenizer, split: str = "test", system: str | None = None,
                    chat: bool = False) -> list[dict]:
    """Prompt records ``{"id", "prompt", ...columns}`` from a QA JSONL (alarm.data.qa format; the prompt is built
    with the model's chat template) or a plain JSONL of ``{"id", "prompt", ...}`` (used as is, or wrapped in the
    chat template with ``chat=True``). None = the packaged quickstart set."""

    first = None
    if path is not None:
        for rec in read_jsonl(path, "prompt file")[:1]:
            first = rec
        if first is None:
            raise AlarmError(f"prompt file {path} has no records")
    if path is None or "question" in first:  # the QA format: records built as training builds them
        if split not in ("train", "test", "all"):
            raise AlarmError(f"no prompts in split {split!r}; use --split train, test or all")
        return [{**r, "split": s} for s in (("train", "test") if split == "all" else (split,))
                for r in qa_prompt_records(path, tokenizer, s, system)]
    out, seen = [], set()
    for i, r in enumerate(read_jsonl(path, "prompt file"), start=1):
        if "id" not in r or not isinstance(r.get("prompt"), str) or not r["prompt"]:
            raise AlarmError(f"{path} record {i}: needs an 'id' and a non-empty string 'prompt' "
                             "(or use the QA format with 'question' and 'passages')")
        clash = [k for k in RESERVED if k in r and k != "prompt"]
        if clash:
            raise AlarmError(f"{path} record {i}: field {clash[0]!r} is reserved for generation files; rename it")
        pid = str(r["id"])
        if pid in seen:
            raise AlarmError(f"{path} record {i}: duplicate id {pid!r}")
        seen.add(pid)
        prompt = r["prompt"]
        if chat:
            if not getattr(tokenizer, "chat_template", None):
                raise AlarmError("--chat needs a tokenizer with a chat template; drop --chat for plain prompts")
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out.append({**{k: v for k, v in r.items() if k not in ("id", "prompt")}, "id": pid, "prompt": prompt})
    return out


def score_records(reward_set, records: list[dict], batch_size: int = 64, progress: bool = False) -> tuple[list[dict], dict[str, dict]]:
    """Raw scores of every reward for every record, and each metric's description (direction, kind).

    Dense rewards are summarised per response (see :func:`alarm.rewards.base.summarize_dense`).
    """
    rewards = ({"holistic": reward_set.holistic} if reward_set.holistic is not None else {}) | reward_set.aspects
    scores: list[dict] = [{} for _ in records]
    described: dict[str, dict] = {}
    with Progress("scoring", len(records), enabled=progress) as bar:
        for i in range(0, len(records), batch_size):
            batch = records[i : i + batch_size]
            prompts, cols = reward_inputs(batch)
            raw = reward_set.raw_scores(prompts, [r["completion"] for r in batch], **cols)
            for name, vals in raw.items():
                hib = bool(getattr(rewards[name], "higher_is_better", True))
                dense = is_dense(rewards[name]) or any(isinstance(v, Dense) for v in vals)
                for j, v in enumerate(vals):
                    if dense:
                        mean, pos = (None, None) if v is None else summarize_dense(v, batch[j]["completion"])
                        scores[i + j][f"{name}.mean_emitted"] = mean
                        scores[i + j][f"{name}.share_positive"] = pos
                    else:
                        scores[i + j][name] = v
                if dense:
                    described[f"{name}.mean_emitted"] = {"reward": name, "kind": "dense mean of emitted values",
                                                         "higher_is_better": hib}
                    described[f"{name}.share_positive"] = {"reward": name, "kind": "dense share of values > 0",
                                                           "higher_is_better": hib}
                else:
                    described[name] = {"reward": name, "kind": "raw", "higher_is_better": hib}
            bar.update(advance=len(batch))
    return scores, described


def normalize_scores(scores: list[dict], described: dict[str, dict], normalizers: dict) -> dict[str, dict]:
    """Add ``<name>.z`` for every sequence-level reward with a normaliser (in place); return the descriptions."""
    described = dict(described)
    for name, n in normalizers.items():
        if name not in described or described[name]["kind"] != "raw":
            continue
        for s in scores:
            s[f"{name}.z"] = n(s.get(name))
        described[f"{name}.z"] = {**described[name], "kind": f"z-normalised (mean {n.mean:.4g}, std {n.std:.4g})"}
    return described


def load_normalizer_file(path: str):
    """Normalisers from a normalizers JSON, or from a PPO checkpoint's trainer_state.json."""

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AlarmError(f"normalisation file {path} not found") from None
    except json.JSONDecodeError as e:
        raise AlarmError(f"normalisation file {path} is not JSON ({e.msg})") from None
    if isinstance(data, dict) and "normalizers" not in data and isinstance(data.get("rewards"), dict):
        return {k: Normalizer(**v) for k, v in data["rewards"].get("normalizers", {}).items()}
    return load_normalizers(path)[0]


def check_score(path: str | os.PathLike, lineno: int, record: dict, metric: str) -> None:
    """A score is a finite number or null (the reward does not apply); anything else names its file, line,
    prompt id and metric, so a hand-edited or foreign file fails where the problem is."""
    v = record["scores"][metric]
    if v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)):
        return
    what = "NaN" if isinstance(v, float) and math.isnan(v) else repr(v)
    raise AlarmError(f"{path} line {lineno} (prompt_id {record.get('prompt_id')!r}): scores.{metric} is {what}; "
                     "a score must be a finite number, or null where the reward does not apply")


def read_scored(path: str | os.PathLike, require_scores: bool = True) -> tuple[list[dict], dict[str, bool]]:
    """Scored records (every score checked by :func:`check_score`) and each metric's direction (from the sidecar
    written by `alarm score`, if any). ``require_scores=False`` also takes plain generation files."""
    p = Path(path)
    if not p.exists():
        raise AlarmError(f"scored file {p} not found")
    records = []
    for lineno, r in jsonl_lines(str(p), read_text(p, "scored file")):
        if not isinstance(r, dict) or "prompt_id" not in r:
            raise AlarmError(f"{p} line {lineno}: needs an object with 'prompt_id' (write it with alarm generate)")
        if "scores" in r or require_scores:
            if not isinstance(r.get("scores"), dict):
                raise AlarmError(f"{p} line {lineno}: needs a 'scores' object; run alarm score first")
            for metric in r["scores"]:
                check_score(p, lineno, r, metric)
        records.append(r)
    directions = {}
    if meta_path(p).exists():
        meta = json.loads(meta_path(p).read_text())
        directions = {k: bool(v.get("higher_is_better", True)) for k, v in meta.get("metrics", {}).items()}
    return records, directions
