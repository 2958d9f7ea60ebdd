"""Throughput of each reward backend (responses/s), one batched call vs one call per response.

    python -m benchmarks.rewards            # the real measurement (~2 min on 2 cores)
    python -m benchmarks.rewards --smoke    # 2 responses, 1 repeat: that it runs

Responses: for each of the 48 quickstart training questions, an answer-like text of ~64 tokens (its reference
answer followed by the start of its first passage, cut to 45 words), with the question, passages and
reference columns the rewards read. Backends: length, readability (textstat), language confidence (lingua),
reference similarity / grounding / relevance (the packaged all-MiniLM-L6-v2 via sentence-transformers), and a
sequence classifier (MiniLM-L6 backbone with a fresh 1-logit head: the size of a small reward model).
Alternating batched / one-at-a-time repeats after a warm-up; medians.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

# `python benchmarks/<script>.py` puts benchmarks/ first on the path, not the repository: put the repository
# first, so `benchmarks` is this package (pysbd installs a top-level `benchmarks` package of its own).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def responses(tokenizer, n: int):
    recs = common.quickstart_records(tokenizer)
    recs = (recs * (n // len(recs) + 1))[:n]
    texts = [" ".join((r["reference"] + " " + r["passages"][0]).split()[:45]) for r in recs]
    prompts = [r["question"] for r in recs]
    cols = {"passages": [r["passages"] for r in recs], "reference": [r["reference"] for r in recs]}
    return prompts, texts, cols


def backends(threads: int):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alarm.rewards.embedding import (
        GroundingReward,
        ReferenceSimilarityReward,
        RelevanceReward,
        load_encoder,
        minilm_path,
    )
    from alarm.rewards.hf_models import SequenceClassifierReward
    from alarm.rewards.simple import LanguageConfidenceReward, LengthReward, ReadabilityReward

    enc = load_encoder()
    path = minilm_path()
    clf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    return {
        "length": LengthReward(),
        "readability": ReadabilityReward(),
        "language_confidence": LanguageConfidenceReward(),
        "reference_similarity": ReferenceSimilarityReward(enc),
        "grounding": GroundingReward(enc),
        "relevance": RelevanceReward(enc),
        "sequence_classifier (MiniLM-L6, bs 8)": SequenceClassifierReward(clf, AutoTokenizer.from_pretrained(path)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=48, help="responses per call")
    p.add_argument("--repeats", type=int, default=5)
    common.common_args(p, "rewards")
    args = p.parse_args(argv)
    if args.smoke:  # the reward models are the real ones (MiniLM is small): only fewer texts
        args.n, args.repeats = 2, 1
    warnings.filterwarnings("ignore")
    load = common.start(args)
    threads = args.threads

    from alarm.rewards.base import compute

    prompts, texts, cols = responses(common.load_tokenizer(), args.n)
    result = {"settings": {**vars(args), "torch_threads": threads}, "machine": common.machine(), "load": load,
              "backends": {}}
    for name, fn in backends(threads).items():
        compute(fn, prompts[:2], texts[:2], **{k: v[:2] for k, v in cols.items()})  # warm-up (lazy loads)
        batched, single = [], []
        for k in range(args.repeats):
            # Fresh texts for every call: textstat memoises per text, which would flatter the second mode.
            fresh = [f"{t} Case {k}b{i}." for i, t in enumerate(texts)]
            t0 = time.perf_counter()
            compute(fn, prompts, fresh, **cols)
            batched.append(time.perf_counter() - t0)
            fresh = [f"{t} Case {k}s{i}." for i, t in enumerate(texts)]
            t0 = time.perf_counter()
            for i in range(len(texts)):
                compute(fn, prompts[i : i + 1], fresh[i : i + 1], **{c: v[i : i + 1] for c, v in cols.items()})
            single.append(time.perf_counter() - t0)
        b, s = common.summary(batched)["median"], common.summary(single)["median"]
        result["backends"][name] = {"batched_s": common.summary(batched), "one_at_a_time_s": common.summary(single),
                                    "batched_per_s": round(args.n / b, 1), "one_at_a_time_per_s": round(args.n / s, 1),
                                    "speedup": round(s / b, 2)}
        print(f"[bench] {name}: batched {args.n / b:.1f}/s, one at a time {args.n / s:.1f}/s", flush=True)
    load["load1_at_end"] = round(common.load1(), 2)
    rows = [[k, v["batched_per_s"], v["one_at_a_time_per_s"], f"{v['speedup']:.1f}×"]
            for k, v in result["backends"].items()]
    md = "\n\n".join([
        f"# Reward throughput ({args.n} responses of ~64 tokens, responses/s)",
        common.md_table(["backend", "batched", "one at a time", "batching speed-up"], rows),
        f"Medians of {args.repeats} alternating repeats after a warm-up; torch threads {threads}.",
        common.machine_line(result["machine"], load)])
    common.write_results(args.name, result, md, args.out)
    return 0


def suite_rows(r: dict) -> list[dict]:
    return [common.suite_row("rewards", f"{name}: responses/s, batched vs one at a time", v["batched_per_s"], "/s",
                             v["one_at_a_time_per_s"], v["speedup"]) for name, v in r["backends"].items()]


if __name__ == "__main__":
    raise SystemExit(main())
