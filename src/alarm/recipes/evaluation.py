"""`alarm generate`, `alarm score`, `alarm select`, `alarm compare`: the evaluation loop on a user's own files.

The file formats (generations, scored generations and their ``.meta.json`` sidecars) are those of
:mod:`alarm.evaluation.scoring`; a run's own evaluation writes the same files through the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from alarm.config import build_reward_set, load_recipe, parse_overrides, read_settings, validate_recipe
from alarm.errors import AlarmError, redact_url
from alarm.evaluation.compare import compare_scored, summary_markdown
from alarm.evaluation.judge import Judge, JudgeConfig
from alarm.evaluation.scoring import (
    load_normalizer_file,
    load_prompt_set,
    meta_path,
    normalize_scores,
    read_scored,
    score_records,
)
from alarm.evaluation.summary import per_question
from alarm.generation import generate_texts
from alarm.io import read_jsonl, read_text, write_json_atomic, write_jsonl_atomic
from alarm.models import load_policy, policy_checkpoint
from alarm.outputs import check_output_dir, check_output_file
from alarm.progress import Progress
from alarm.rewards.normalize import Normalizer, save_normalizers
from alarm.selection import DEFAULT_MAX_CONFLICT, pair_up, run_selection, selection_markdown


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _info(msg: str) -> None:
    print(msg, file=sys.stderr)


def _check_numbers(args: argparse.Namespace, rules: dict[str, tuple[str, str, float, float | None]]) -> None:
    """Refuse, before anything loads, a number outside its range. ``rules``: argument → (flag, ``">="`` or
    ``">"``, lowest, highest or None); an argument left unset (None) is not checked."""
    for name, (flag, op, low, high) in rules.items():
        v = getattr(args, name, None)
        if v is None:
            continue
        if (v < low if op == ">=" else v <= low) or (high is not None and v > high) or v != v:
            what = f"at least {low:g}" if op == ">=" else f"above {low:g}"
            raise AlarmError(f"{flag} must be {what}{f' and at most {high:g}' if high is not None else ''}, "
                             f"got {v:g}")


# ---------------------------------------------------------------------------------------------------------
# generate


def _read_existing_generations(out: Path, num_samples: int) -> tuple[list[dict], set[str]]:
    """Records already written (a cut-off last line is dropped) and the prompt ids with all their samples."""
    if not out.exists():
        return [], set()
    records, lines = [], read_text(out, "generations file").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines):  # interrupted mid-write
                break
            raise AlarmError(f"{out} line {lineno}: invalid JSON; fix or delete the file (or use --overwrite)") from None
    counts: dict[str, set[int]] = {}
    for r in records:
        counts.setdefault(str(r["prompt_id"]), set()).add(int(r["sample"]))
    done = {p for p, s in counts.items() if s == set(range(num_samples))}
    return [r for r in records if str(r["prompt_id"]) in done], done


def generate(args: argparse.Namespace) -> int:
    import torch

    _check_numbers(args, {"max_new_tokens": ("--max-new-tokens", ">=", 1, None),
                          "num_samples": ("--num-samples", ">=", 1, None), "batch_size": ("--batch-size", ">=", 1, None),
                          "max_prompts": ("--max-prompts", ">=", 1, None), "temperature": ("--temperature", ">", 0, None),
                          "top_p": ("--top-p", ">", 0, 1), "top_k": ("--top-k", ">=", 0, None)})
    out = check_output_file(args.out, "--out")
    settings = {"policy": args.policy, "base_model": args.base_model, "prompts": args.prompts, "split": args.split,
                "system": args.system, "chat": args.chat, "max_new_tokens": args.max_new_tokens,
                "do_sample": args.sample, "num_samples": args.num_samples, "seed": args.seed,
                **({"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k} if args.sample else {})}
    if args.num_samples > 1 and not args.sample:
        raise AlarmError("--num-samples > 1 with greedy decoding gives identical samples; add --sample")
    kept: list[dict] = []
    done: set[str] = set()
    if out.exists() and not args.overwrite:
        if not args.resume:
            raise AlarmError(f"{out} exists; pass --resume to continue it or --overwrite to start again")
        old = json.loads(meta_path(out).read_text()) if meta_path(out).exists() else {}
        differ = sorted(k for k in settings if old.get(k) != settings[k])
        if differ:
            raise AlarmError(f"{out} was written with different settings ({', '.join(differ)}); use the same "
                             "settings to resume, or --overwrite, or another --out")
        kept, done = _read_existing_generations(out, args.num_samples)
    model, tokenizer = load_policy(args.policy, base_model=args.base_model)
    ckpt = policy_checkpoint(args.policy)
    described = args.policy if ckpt is None else f"checkpoint {ckpt} on {args.base_model or 'its recorded base'}"
    prompts = load_prompt_set(args.prompts, tokenizer, args.split, args.system, args.chat)
    if args.max_prompts:
        prompts = prompts[: args.max_prompts]
    todo = [p for p in prompts if p["id"] not in done]
    _info(f"generate: {described}; {len(prompts)} prompts, {len(prompts) - len(todo)} already in {out}, "
          f"{len(todo)} to go ({'sampling' if args.sample else 'greedy'}, {args.num_samples} per prompt)")
    write_jsonl_atomic(out, kept)  # drops a cut-off line or a half-written prompt before appending
    write_json_atomic(meta_path(out), settings)
    torch.manual_seed(args.seed)
    chunk = max(1, args.batch_size // args.num_samples)
    with Progress("generating", len(todo)) as bar, out.open("a", encoding="utf-8") as f:
        for i in range(0, len(todo), chunk):
            batch = todo[i : i + chunk]
            texts = generate_texts(model, tokenizer, [p["prompt"] for p in batch], max_new_tokens=args.max_new_tokens,
                                   do_sample=args.sample, num_samples=args.num_samples, temperature=args.temperature,
                                   top_p=args.top_p, top_k=args.top_k, batch_size=args.batch_size)
            for p, samples in zip(batch, texts):
                columns = {k: v for k, v in p.items() if k not in ("id", "prompt")}
                for s, completion in enumerate(samples):
                    f.write(json.dumps({"prompt_id": p["id"], "sample": s, "prompt": p["prompt"],
                                        "completion": completion, **columns}, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(advance=len(batch))
    _info(f"generate: wrote {out} ({len(prompts) * args.num_samples} responses)")
    return 0


# ---------------------------------------------------------------------------------------------------------
# score


_RECIPE_KEYS = {"name", "output_dir", "seed", "model", "data", "rewards", "combine", "sample", "selection", "ppo", "eval"}


def load_reward_set(path: str, overrides: Sequence[str] = ()):
    """The rewards of a recipe, or of a rewards-only YAML (the recipe's ``rewards:`` block), validated the same way."""

    p = Path(path)
    data = read_settings(p)
    if set(data) & _RECIPE_KEYS:
        recipe = load_recipe(p, list(overrides))
    else:
        recipe = validate_recipe({"rewards": data, **parse_overrides(list(overrides))})
    if recipe.rewards.holistic is None and not recipe.rewards.aspects:
        raise AlarmError(f"{p} configures no rewards; add rewards.holistic and/or rewards.aspects")
    if recipe.rewards.holistic is None:  # scoring does not combine: any mode that needs no holistic will do
        recipe = recipe.model_copy(update={"combine": {**recipe.combine, "mode": "aspect_only"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hierarchy warnings concern training, not scoring
        return build_reward_set(recipe)


def score(args: argparse.Namespace) -> int:

    _check_numbers(args, {"batch_size": ("--batch-size", ">=", 1, None)})
    if args.out and len(args.files) != 1:
        raise AlarmError("--out names one output; with several input files use --out-dir")
    if args.fit and args.normalizers:
        raise AlarmError("give either --normalizers FILE (fitted before) or --fit (fit on these files), not both")
    if args.out:
        check_output_file(args.out, "--out")
    elif args.out_dir:
        check_output_dir(args.out_dir, "--out-dir")
    else:
        for f in args.files:  # the scored files go beside their inputs
            check_output_dir(Path(f).parent, f"the directory of {f} (where its scored file goes; or give --out-dir)")
    if args.fit and args.save_normalizers:
        check_output_file(args.save_normalizers, "--save-normalizers")
    reward_set = load_reward_set(args.rewards, args.set or [])
    targets = {f: Path(args.out) if args.out else Path(args.out_dir or Path(f).parent) / (_stem(f) + ".scored.jsonl")
               for f in args.files}
    for f, target in targets.items():
        if target.exists() and not args.overwrite:
            raise AlarmError(f"{target} exists; pass --overwrite to replace it, or another --out / --out-dir")
        if target.resolve() == Path(f).resolve():
            raise AlarmError(f"{target} is the input {f} itself; write the scored file elsewhere (--out / --out-dir)")
    inputs = {f: read_jsonl(f, "generation file") for f in args.files}
    for f, recs in inputs.items():
        if not recs:
            raise AlarmError(f"generation file {f} holds no records; nothing to score (write it with alarm generate)")
        for i, r in enumerate(recs, start=1):
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("completion"), str):
                raise AlarmError(f"{f} record {i}: needs string 'prompt' and 'completion' (write it with alarm generate)")
    results = {}
    for f, recs in inputs.items():
        _info(f"score: {f} ({len(recs)} responses, rewards: {', '.join(reward_set.names())})")
        results[f] = score_records(reward_set, recs, args.batch_size, progress=True)
    normalizers: dict[str, Normalizer] = {}
    norm_source = None
    if args.fit:
        sequence_level = {d["reward"] for _, desc in results.values() for d in desc.values() if d["kind"] == "raw"}
        for name in reward_set.normalize:
            if name not in sequence_level:  # dense rewards are summarised, not z-normalised
                continue
            normalizers[name] = Normalizer.fit([s.get(name) for scores, _ in results.values() for s in scores],
                                               name=name)
        norm_source = Path(args.save_normalizers or Path(args.out_dir or Path(args.files[0]).parent) / "normalizers.json")
        save_normalizers(norm_source, normalizers, fitted_on=[str(f) for f in args.files])
        _info(f"score: fitted normalisers for {', '.join(normalizers) or 'nothing'} on {sum(len(v) for v in inputs.values())} "
              f"responses; saved to {norm_source}")
    elif args.normalizers:
        normalizers = load_normalizer_file(args.normalizers)
        norm_source = Path(args.normalizers)
    else:
        _info("score: no --normalizers / --fit given: writing raw values only")
    for f, (scores, described) in results.items():
        described = normalize_scores(scores, described, normalizers)
        target = targets[f]
        write_jsonl_atomic(target, [{**r, "scores": s} for r, s in zip(inputs[f], scores)])
        write_json_atomic(meta_path(target), {"source": str(Path(f).resolve()), "rewards_config": str(args.rewards),
                                        "normalizers": str(norm_source) if norm_source else None,
                                        "metrics": described})
        _info(f"score: wrote {target} ({len(scores)} responses, {len(described)} metrics)")
    return 0


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".scored.jsonl", ".jsonl"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


# ---------------------------------------------------------------------------------------------------------
# select


def _directions(per_file: Sequence[dict[str, bool]], lower: Sequence[str]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for d in per_file:
        for k, v in d.items():
            if k in out and out[k] != v:
                raise AlarmError(f"the input files disagree on whether {k!r} is higher- or lower-is-better")
            out[k] = v
    for k in lower:
        out[k] = False
    return out


def _by_prompt(records: list[dict], sample: int, where: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in records:
        if int(r.get("sample", 0)) != sample:
            continue
        pid = str(r["prompt_id"])
        if pid in out:
            raise AlarmError(f"{where}: prompt {pid!r} has two records with sample {sample}")
        out[pid] = r["scores"]
    if not out:
        raise AlarmError(f"{where}: no records with sample {sample}")
    return out


def default_aspects(names: Iterable[str], holistic: str) -> list[str]:
    """Every metric except the holistic one (and its normalised copy) and normalised copies of raw metrics
    (a z-score has the same pair signs and ranks as its raw value)."""
    names = set(names)
    base = holistic[:-2] if holistic.endswith(".z") else holistic
    return sorted(n for n in names if n not in (base, f"{base}.z")
                  and not (n.endswith(".z") and n[:-2] in names))


def _decoding(path: str) -> dict | None:
    """How a scored file's responses were generated (its generation sidecar's settings), if the sidecars tell."""
    scored = meta_path(path)
    source = json.loads(scored.read_text()).get("source") if scored.exists() else None
    if source and not Path(source).is_absolute() and not Path(source).exists():
        # written relative to wherever `alarm score` ran (older sidecars): try beside the scored file
        source = str(Path(path).parent / Path(source).name)
    gen = meta_path(source) if source else meta_path(path)
    return json.loads(gen.read_text()) if gen.exists() else None


def _check_greedy_vs_sample(greedy: str, sampled: str) -> None:
    """The paper's pairs: the first file greedy, the second a pure sample (T 1, top-p 1, top-k 0)."""
    for path, want_sample in ((greedy, False), (sampled, True)):
        d = _decoding(path)
        if d is None:
            _info(f"select: {path} has no generation sidecar; taking it as {'sampled' if want_sample else 'greedy'}")
            continue
        if bool(d.get("do_sample")) != want_sample:
            raise AlarmError(f"{path} was {'greedy' if want_sample else 'sampled'}: greedy-vs-sample pairs take the "
                             "greedy file first and the sampled one second (or pass --pairs systems)")
        if want_sample and (d.get("temperature"), d.get("top_p"), d.get("top_k")) != (1.0, 1.0, 0):
            _info(f"select: {path} was sampled with temperature {d.get('temperature')}, top-p {d.get('top_p')}, "
                  f"top-k {d.get('top_k')}; the paper's pure sample is 1, 1, 0")


def select(args: argparse.Namespace) -> int:

    if args.top_k is None and args.max_conflict is None:
        args.max_conflict = DEFAULT_MAX_CONFLICT
    check_output_dir(args.out_dir, "--out-dir")
    pairs = args.pairs or ("two-samples" if len(args.files) == 1 else "greedy-vs-sample")
    need = 1 if pairs == "two-samples" else 2
    if len(args.files) != need:
        raise AlarmError(f"--pairs {pairs} takes {'one scored file (two samples per prompt)' if need == 1 else 'two scored files'}"
                         f", got {len(args.files)}" + ("; for the paper's pairs give the greedy file, then the sampled "
                                                        "one" if pairs == "greedy-vs-sample" else ""))
    if pairs == "two-samples":
        records, directions = read_scored(args.files[0])
        s0, s1 = (int(x) for x in (_csv(args.samples) or ["0", "1"]))
        a = _by_prompt(records, s0, f"{args.files[0]} sample {s0}")
        b = _by_prompt(records, s1, f"{args.files[0]} sample {s1}")
        source = f"{args.files[0]}, samples {s0} and {s1} of each prompt"
        sides = (f"sample {s0}", f"sample {s1}")
        dirs = _directions([directions], _csv(args.lower_is_better))
    else:
        if pairs == "greedy-vs-sample":
            _check_greedy_vs_sample(*args.files)
        (ra, da), (rb, db) = read_scored(args.files[0]), read_scored(args.files[1])
        a = _by_prompt(ra, 0 if pairs == "greedy-vs-sample" else args.sample, args.files[0])
        b = _by_prompt(rb, args.sample, args.files[1])
        if pairs == "greedy-vs-sample":
            source = f"greedy outputs {args.files[0]} vs samples {args.files[1]} (sample {args.sample})"
            sides = ("greedy", "sample")
        else:
            source = f"{args.files[0]} vs {args.files[1]} (sample {args.sample})"
            sides = (_stem(args.files[0]), _stem(args.files[1]))
        dirs = _directions([da, db], _csv(args.lower_is_better))
    names = {k for s in [*a.values(), *b.values()] for k in s}
    if args.holistic not in names:
        raise AlarmError(f"no holistic score {args.holistic!r} in the scores (found: {', '.join(sorted(names))}); "
                         "name it with --holistic")
    aspects = _csv(args.aspects) or default_aspects(names, args.holistic)
    h_a, h_b, m_a, m_b = pair_up(a, b, holistic=args.holistic, aspects=aspects)
    directions = {k: dirs[k] for k in aspects if k in dirs}
    stats, selection, wins = run_selection(
        (h_a, h_b, m_a, m_b), args.out_dir, higher_is_better=directions, tie_tol=args.tie_tol, holistic=args.holistic,
        sides=sides, max_conflict=args.max_conflict, top_k=args.top_k, min_decisive=args.min_decisive,
        extra={"source": source, "pairs": pairs, "holistic": args.holistic},
        header=f"# Reward selection\n\nPairs: {len(h_a)} from {source}; holistic reward: `{args.holistic}`.\n\n",
        footer="\n![selection](selection.png)\n")
    print(selection_markdown(stats, selection, wins, sides))
    _info(f"select: kept {', '.join(selection.kept) or 'none'}; wrote {args.out_dir}/selection.json, selection.md, selection.png")
    return 0


# ---------------------------------------------------------------------------------------------------------
# compare


def judge_config_from_args(args: argparse.Namespace, out: Path):

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.judge_api_key_env or ""):
        # never echo the value: a key pasted here by mistake must not reach the terminal or the logs
        raise AlarmError("--judge-api-key-env takes the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                         "not the key itself; export the key in that variable")

    if not args.judge_model:
        raise AlarmError("--judge-url needs --judge-model (the model name the endpoint serves)")
    return JudgeConfig(base_url=args.judge_url, model=args.judge_model, api_key_env=args.judge_api_key_env,
                       temperature=args.judge_temperature, max_tokens=args.judge_max_tokens,
                       concurrency=args.judge_concurrency, max_retries=args.judge_retries, timeout=args.judge_timeout,
                       cache_path=str(args.judge_cache or out / "judge_cache.jsonl"),
                       failures_path=str(out / "judge_unparsed.jsonl"))


def compare(args: argparse.Namespace) -> int:

    names = _csv(args.names) or [_stem(f) for f in args.files]
    if len(names) != len(args.files):
        raise AlarmError(f"--names gives {len(names)} names for {len(args.files)} files")
    if len(set(names)) != len(names):
        raise AlarmError(f"system names must differ (got {names}); set them with --names")
    check_output_dir(args.out_dir, "--out-dir")
    if args.judge_cache:
        check_output_file(args.judge_cache, "--judge-cache")
    systems, dirs = {}, []
    for n, f in zip(names, args.files):
        systems[n], d = read_scored(f, require_scores=False)
        if args.mean_over_samples:  # one row per prompt, each score averaged over its samples
            systems[n] = per_question(systems[n])
        dirs.append(d)
    directions = _directions(dirs, _csv(args.lower_is_better))
    out = Path(args.out_dir)
    judge = None
    if args.judge_url:

        judge = Judge(judge_config_from_args(args, out))
        if not os.environ.get(args.judge_api_key_env):
            _info(f"compare: ${args.judge_api_key_env} is not set; calling the judge without an API key")
        _info(f"compare: judge {args.judge_model} at {redact_url(args.judge_url)}; {len(judge.cache)} verdicts already cached")
    result, judge_result, plots = compare_scored(
        systems, directions, out, metrics=_csv(args.metrics) or None, method=args.ci, confidence=args.confidence,
        tie_tol=args.tie_tol, n_boot=args.n_boot, seed=args.seed, sample=args.sample,
        allow_missing=args.allow_missing, judge=judge, judge_max_prompts=args.judge_max_prompts,
        files=dict(zip(names, args.files)), progress=True, info=_info)
    if judge is not None:
        _info(f"compare: judge made {judge.requests_made} requests; {judge.unparsed} replies never parsed "
              f"(logged in {out / 'judge_unparsed.jsonl'})")
    print(summary_markdown(result, judge_result))
    _info(f"compare: wrote {out}/report.md, compare.json and {len(plots)} plot(s)")
    return 0


# ---------------------------------------------------------------------------------------------------------
# argparse


def _add_comparison_options(p: argparse.ArgumentParser) -> None:
    """How two scores of a metric compare: the options of `alarm select` and `alarm compare` alike."""
    p.add_argument("--lower-is-better", default=None, help="comma-separated metrics where lower is better")
    p.add_argument("--tie-tol", type=float, default=0.0, help="differences within this count as ties")


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("generate", allow_abbrev=False, help="generate responses from a policy for a prompt set",
                              description="Generate responses (greedy by default) to a JSONL of prompts; resumable.")
    p.add_argument("--policy", default="smollm2-135m-instruct",
                   help="model path, hub id, 'smollm2-135m-instruct', a PPO checkpoint dir or a run dir")
    p.add_argument("--base-model", default=None, help="base model of a checkpoint (default: the one it records, else SmolLM2)")
    p.add_argument("--prompts", default=None, help="QA JSONL (alarm.data.qa format) or JSONL of {id, prompt}; default: quickstart")
    p.add_argument("--split", default="test", help="QA split to use: train, test or all (default test)")
    p.add_argument("--system", default=None, help="system prompt (QA default: the quickstart instruction)")
    p.add_argument("--chat", action="store_true", help="wrap plain prompts in the model's chat template")
    p.add_argument("--out", required=True, help="generations JSONL to write")
    p.add_argument("--max-prompts", type=int, default=None, help="answer at most this many prompts (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="the longest response, in tokens")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--num-samples", type=int, default=1, help="responses per prompt (needs --sample when > 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, 1: off (with --sample)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0: off (with --sample)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per generate call")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an existing output (same settings)")
    g.add_argument("--overwrite", action="store_true", help="start the output again")
    p.set_defaults(handler=generate)

    p = subparsers.add_parser("score", allow_abbrev=False, help="score generation files with configured rewards",
                              description="Apply a recipe's rewards (or a rewards-only YAML) to generation files.")
    p.add_argument("files", nargs="+", help="generation JSONL files")
    p.add_argument("--rewards", required=True, help="recipe YAML, or a YAML of the rewards block alone")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe setting (repeatable)")
    p.add_argument("--normalizers", default=None, help="normalisers JSON (or a PPO checkpoint's trainer_state.json)")
    p.add_argument("--fit", action="store_true", help="fit normalisers on these files (the initial policy's samples)")
    p.add_argument("--save-normalizers", default=None, help="where --fit saves them (default <out dir>/normalizers.json)")
    p.add_argument("--out", default=None, help="scored output for a single input file")
    p.add_argument("--out-dir", default=None, help="directory for <name>.scored.jsonl (default: beside each input)")
    p.add_argument("--batch-size", type=int, default=64, help="responses per reward call")
    p.add_argument("--overwrite", action="store_true", help="replace scored files that exist already")
    p.set_defaults(handler=score)

    p = subparsers.add_parser("select", allow_abbrev=False, help="choose the aspect rewards that agree with the holistic reward",
                              description="Conflict rate (inconsistency), agreement, tie rate, Kendall τ-b and Spearman ρ "
                                          "of each aspect against the holistic reward on paired responses, and each "
                                          "reward's win rate of side a over side b; select and explain. The paper's "
                                          "pairs: the initial policy's greedy outputs (first file) vs its pure samples "
                                          "(second file: alarm generate --sample, T 1, top-p 1, top-k 0).")
    p.add_argument("files", nargs="+", help="greedy then sampled scored files (default), one file with two samples "
                                            "per prompt, or two systems' scored files")
    p.add_argument("--pairs", choices=("greedy-vs-sample", "two-samples", "systems"), default=None,
                   help="how to pair responses (default: greedy-vs-sample for two files, two-samples for one)")
    p.add_argument("--holistic", default="holistic", help="the holistic metric's name (default holistic)")
    p.add_argument("--aspects", default=None, help="comma-separated aspects (default: every other metric)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--max-conflict", type=float, default=None, help="keep conflict ≤ this (default 0.4)")
    rule.add_argument("--top-k", type=int, default=None, help="keep the k lowest conflict rates")
    p.add_argument("--min-decisive", type=float, default=0.0, help="drop aspects deciding fewer pairs than this share")
    p.add_argument("--samples", default=None, help="one file: the two sample numbers to pair (default 0,1)")
    p.add_argument("--sample", type=int, default=0, help="two files: the sample number to use (default 0)")
    _add_comparison_options(p)
    p.add_argument("--out-dir", required=True, help="directory for selection.{json,md,png}")
    p.set_defaults(handler=select)

    p = subparsers.add_parser("compare", allow_abbrev=False, help="compare systems: means and win rates with CIs, the paper's win-rate matrix, optional LLM judge",
                              description="Align systems' scored files by prompt id; means with confidence intervals, "
                                          "pairwise win rates by every reward, an optional LLM judge; Markdown + PNG report.")
    p.add_argument("files", nargs="+", help="scored (or plain generation) JSONL files, one per system")
    p.add_argument("--names", default=None, help="comma-separated system names (default: file names)")
    p.add_argument("--metrics", default=None, help="comma-separated metrics (default: every common score)")
    _add_comparison_options(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample", type=int, default=0, help="which sample of each prompt to compare (default 0)")
    which.add_argument("--mean-over-samples", action="store_true",
                   help="compare each prompt's scores averaged over all its samples (as a run's evaluation with "
                        "eval.samples does) instead of one sample")
    p.add_argument("--allow-missing", action="store_true", help="compare only prompts every system answered; report counts")
    p.add_argument("--ci", choices=("t", "bootstrap"), default="bootstrap",
                   help="confidence interval of means (default bootstrap over prompts; win rates always bootstrap)")
    p.add_argument("--confidence", type=float, default=0.95, help="coverage of every interval")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the prompts")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--out-dir", required=True, help="directory for report.md, compare.json and the plots")
    j = p.add_argument_group("LLM judge (any OpenAI-compatible chat endpoint)")
    j.add_argument("--judge-url", default=None, help="base URL, e.g. http://127.0.0.1:8080/v1")
    j.add_argument("--judge-model", default=None, help="the model name the endpoint serves")
    j.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                   help="NAME of the environment variable holding the API key (the key is never a flag)")
    j.add_argument("--judge-concurrency", type=int, default=4, help="requests in flight at once")
    j.add_argument("--judge-retries", type=int, default=4, help="retries per request with exponential backoff")
    j.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request")
    j.add_argument("--judge-temperature", type=float, default=0.0, help="the judge's sampling temperature")
    j.add_argument("--judge-max-tokens", type=int, default=128, help="the longest reply, in tokens")
    j.add_argument("--judge-max-prompts", type=int, default=None, help="judge only the first N common prompts")
    j.add_argument("--judge-cache", default=None, help="verdict cache JSONL (default <out-dir>/judge_cache.jsonl)")
    p.set_defaults(handler=compare)

