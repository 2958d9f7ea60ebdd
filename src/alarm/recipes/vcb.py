"""`alarm vcb sample` and `alarm vcb train`: offline alignment on scored candidates (docs/method.md §2.5).

    alarm vcb sample --config recipes/vcb_quickstart.yaml           # N candidates per prompt, scored
    alarm vcb train  --config recipes/vcb_quickstart.yaml vcb.loss=dpo

``sample`` draws ``sample.n`` candidates per prompt from the initial policy (train prompts, plus held-out test
prompts for diagnostics), writes them in shards (a rerun skips finished shards), then fits the rewards on the
training candidates and scores every candidate with the recipe's combination. The result is a ``datasets``
dataset under ``<run>/samples/dataset`` with columns prompt_id, split, prompt, candidate_index, candidate,
reward (the combined return) and raw_<name> for each reward (dense rewards: their mean value), plus the
columns the rewards read. ``train`` trains on pairs of those candidates with the VCB loss (a reconstruction of
the paper's — see alarm.trainers.vcb), VCB-hinge, DPO or IPO, writing to ``<run>/train-<loss>``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import textwrap
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from alarm.config import RunSpec, build_reward_set, read_settings, validate_recipe
from alarm.data.prompts import prompt_records, reward_inputs
from alarm.errors import AlarmError
from alarm.evaluation.plots import VCB_PANELS
from alarm.generation import generate_texts
from alarm.io import claim_run_dir, write_text_atomic
from alarm.models import is_seq2seq, load_policy
from alarm.outputs import check_output_dir
from alarm.recipes.ppo import RESUME_HELP, initial_and_trained, resume_arg
from alarm.recipes.report import evaluate_systems, evaluation_markdown, print_result, training_markdown
from alarm.rewards.base import summarize
from alarm.trainers.vcb import VCBConfig, VCBTrainer

_STRICT = ConfigDict(extra="forbid")


class VCBSampleSpec(BaseModel):
    """The candidates VCB trains on: N samples per prompt from the initial policy, each scored."""

    model_config = _STRICT
    n: int = Field(4, ge=2, description="candidates per prompt (the VCB paper: 4)")
    eval_prompts: int | None = Field(16, ge=0, description="held-out (test split) prompts sampled too, for the "
                                     "diagnostics (null: all)")
    max_new_tokens: int = Field(64, ge=1, description="the longest candidate, in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling (1: off)")
    top_k: int = Field(0, ge=0, description="top-k sampling (0: off)")
    prompts_per_shard: int = Field(8, ge=1, description="prompts per shard written, the unit of resumption")
    batch_size: int = Field(16, ge=1, description="sequences per generate() call")


class VCBRecipe(RunSpec):
    """A VCB run: the shared sections of every run (alarm.config.RunSpec), sampling, training."""

    name: str = Field("vcb", description="the run's name (its default directory is runs/<name>)")
    sample: VCBSampleSpec = Field(default_factory=VCBSampleSpec, description="the scored candidates")
    vcb: VCBConfig = Field(default_factory=VCBConfig, description="training on pairs of candidates")
    train_dir: str | None = Field(None, description="where training writes (null: <run directory>/train-<loss>)")

    def samples_dir(self) -> Path:
        return self.run_dir() / "samples"

    def training_dir(self) -> Path:
        return Path(self.train_dir) if self.train_dir else self.run_dir() / f"train-{self.vcb.loss}"


def load_vcb_recipe(path: str | Path | None, overrides: list[str] | None = None) -> VCBRecipe:
    """Read and validate a VCB recipe; unknown keys and bad values fail with one line naming the key."""
    return validate_recipe(read_settings(path, overrides), VCBRecipe)


# ----------------------------------------------------------------------------------------------------------
# Data: prompt records with the columns the rewards read
# ----------------------------------------------------------------------------------------------------------


def vcb_records(recipe: VCBRecipe, tokenizer, seq2seq: bool) -> list[dict]:
    """Train prompts (up to data.max_train_prompts) then held-out prompts (up to sample.eval_prompts), built by
    :func:`alarm.data.prompts.prompt_records` — the records and the split PPO uses for the same data."""
    d = recipe.data
    train = prompt_records(d, tokenizer, d.train_split, seq2seq)[: d.max_train_prompts]
    test = prompt_records(d, tokenizer, d.test_split, seq2seq)[: recipe.sample.eval_prompts]
    return [{"prompt_id": r["id"], "split": split, **{k: v for k, v in r.items() if k != "id"}}
            for split, rs in (("train", train), ("test", test)) for r in rs]


# ----------------------------------------------------------------------------------------------------------
# alarm vcb sample
# ----------------------------------------------------------------------------------------------------------


def run_sample(recipe: VCBRecipe, model=None, tokenizer=None, reward_set=None, progress: bool = True,
               overwrite: bool = False) -> Path:
    """Sample, score and store the candidates; returns the dataset directory. Finished shards are skipped;
    ``overwrite`` replaces earlier samples, once the model, the data and the rewards were loaded."""
    import datasets
    import torch

    out = check_output_dir(recipe.samples_dir(), "samples directory")
    shards, final = out / "shards", out / "dataset"
    s = recipe.sample
    meta = {"model": recipe.model.name, "data": recipe.data.model_dump(), "seed": recipe.seed, **s.model_dump()}
    if overwrite and out.exists():
        if model is None or tokenizer is None:
            model, tokenizer = load_policy(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
        vcb_records(recipe, tokenizer, is_seq2seq(model))
        reward_set = reward_set if reward_set is not None else build_reward_set(recipe)
        claim_run_dir(out, resume=False, overwrite=True, what="samples directory")
    if (out / "meta.json").exists():
        old = json.loads((out / "meta.json").read_text())
        if old != meta:
            changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise AlarmError(f"{out} holds samples made with other settings ({', '.join(changed)}); "
                             "restore them or set output_dir to a new directory")
    if final.exists():
        print(f"samples already complete in {final}")
        return final
    shards.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "meta.json", json.dumps(meta, indent=2))
    if model is None or tokenizer is None:
        model, tokenizer = load_policy(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    records = vcb_records(recipe, tokenizer, is_seq2seq(model))
    rs = reward_set if reward_set is not None else build_reward_set(recipe)  # before sampling: a reward that
    # cannot load (a hub model without a network) fails now, not after every candidate was generated

    k_per = s.prompts_per_shard
    for k in range(0, len(records), k_per):
        path = shards / f"shard-{k // k_per:05d}.jsonl"
        if path.exists():
            continue  # resumable: this batch of prompts is done
        batch = records[k : k + k_per]
        torch.manual_seed(recipe.seed + k // k_per)  # a resumed run draws the same samples
        texts = generate_texts(model, tokenizer, [r["prompt"] for r in batch], max_new_tokens=s.max_new_tokens,
                               do_sample=True, num_samples=s.n, temperature=s.temperature, top_p=s.top_p,
                               top_k=s.top_k, batch_size=s.batch_size,
                               progress=f"sampling {k + len(batch)}/{len(records)} prompts" if progress else None)
        lines = [json.dumps({**r, "candidate_index": c, "candidate": t})
                 for r, cands in zip(batch, texts) for c, t in enumerate(cands)]
        write_text_atomic(path, "\n".join(lines) + "\n")

    rows = [json.loads(line) for p in sorted(shards.glob("shard-*.jsonl")) for line in p.read_text().splitlines()]

    train_rows = [r for r in rows if r["split"] == "train"]
    prompts, columns = reward_inputs(train_rows)
    rs.fit(prompts, [r["candidate"] for r in train_rows], **columns)
    prompts, columns = reward_inputs(rows)
    cands = [r["candidate"] for r in rows]
    returns, stats = rs.sequence_rewards(prompts, cands, **columns)
    raw = rs.raw_scores(prompts, cands, **columns)
    for i, r in enumerate(rows):
        r["reward"] = float(returns[i])
        for name, vals in raw.items():
            r[f"raw_{name}"] = summarize(vals[i], r["candidate"])
    tmp = out / ".tmp-dataset"
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
    write_text_atomic(out / "reward_state.json", json.dumps(rs.state(), indent=2))
    write_text_atomic(out / "sample_stats.json", json.dumps(stats, indent=2))
    os.replace(tmp, final)
    print(f"wrote {len(rows)} candidates for {len(records)} prompts to {final} "
          f"(mean reward {sum(returns) / len(returns):+.3f})")
    return final


# ----------------------------------------------------------------------------------------------------------
# alarm vcb train
# ----------------------------------------------------------------------------------------------------------


def load_samples(recipe: VCBRecipe):
    import datasets

    path = recipe.samples_dir() / "dataset"
    if not path.exists():
        raise AlarmError(f"no samples at {path}; run `alarm vcb sample --config <recipe>` first")
    return datasets.load_from_disk(str(path))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[-80:]


def run_train(recipe: VCBRecipe, resume: bool | str = False, model=None, tokenizer=None, progress: bool = True,
              overwrite: bool = False) -> dict:
    """Train on the stored samples; returns the final held-out diagnostics. ``resume``: True for the newest
    intact checkpoint or a checkpoint's path; ``overwrite`` replaces an earlier training run once every
    input was loaded."""

    out = check_output_dir(recipe.training_dir(), "training directory")
    samples = load_samples(recipe)
    meta = json.loads((recipe.samples_dir() / "meta.json").read_text())
    reward_set = build_reward_set(recipe)  # the greedy diagnostics (vcb.eval_greedy) and the final evaluation
    reward_set.load_state(json.loads((recipe.samples_dir() / "reward_state.json").read_text()))
    if model is None or tokenizer is None:
        model, tokenizer = load_policy(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    claim_run_dir(out, bool(resume), overwrite, what="training directory")
    trainer = VCBTrainer(recipe.vcb, model, tokenizer, samples, out,
                         reward_set=reward_set if recipe.vcb.eval_greedy else None,
                         max_new_tokens=meta["max_new_tokens"],
                         reference_cache=recipe.samples_dir() / f"reference_logprobs-{_slug(recipe.model.name)}.pt")
    if resume and not trainer.resume(resume if isinstance(resume, str) else None):
        print(f"no checkpoint in {out / 'checkpoints'}: training starts fresh")
    history = trainer.train(progress=progress)
    final = next((m for m in reversed(history) if any(k.startswith("eval/") for k in m)), {})
    if trainer.accelerator.is_main_process:
        summary = {"loss": recipe.vcb.loss, "pairs": len(trainer.pairs), "steps": trainer.step_idx, **final}
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
        result = evaluate_vcb(recipe, trainer, reward_set, tokenizer, out)
        report = write_vcb_report(recipe, out, _read_metrics(out), result, summary)
        print_result(result, None)
        print()
        print("\n".join(calibration_lines(_read_metrics(out))))
        print()
        print(f"{recipe.vcb.loss}: {trainer.step_idx} steps on {len(trainer.pairs)} pairs → {out}")
        print(f"Full report (plots, {len(result.get('examples') or [])} example answers, every metric):\n  {report}")
    return final


def _read_metrics(out: Path) -> list[dict]:
    """Every record of the training run's metrics.jsonl (a resumed run's earlier steps included)."""
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _greedy_file(out: Path, step: int, ids: list[str]) -> list[str] | None:
    """The greedy answers the trainer's diagnostics wrote at ``step``, if they cover exactly ``ids``."""
    path = out / f"greedy-step-{step:06d}.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["completion"] for r in rows] if [str(r["prompt_id"]) for r in rows] == ids else None


def evaluate_vcb(recipe: VCBRecipe, trainer: VCBTrainer, reward_set, tokenizer, out: Path) -> dict:
    """The initial vs the trained policy on the held-out prompts, as `alarm run` evaluates (``out/eval/``,
    ``out/eval.json``): greedy answers (those the trainer's diagnostics already wrote at step 0 and at the
    last step when there are; else generated here), scored with the run's rewards and normalisers, paired
    differences, win rates, the length control and example answers. Empty without held-out prompts."""
    keep = ("prompt_id", "prompt", "split", "candidate", "candidate_index", "reward")
    records = [{"id": str(r["prompt_id"]), "prompt": r["prompt"],
                **{k: v for k, v in r.items() if k not in keep and not k.startswith("raw_")}}
               for r in trainer.eval_prompts]
    if not records:
        return {}
    ids = [r["id"] for r in records]
    texts = {"initial": _greedy_file(out, 0, ids), "trained": _greedy_file(out, trainer.step_idx, ids)}
    texts = {k: v for k, v in texts.items() if v is not None}
    if len(texts) < 2 and trainer.accelerator.num_processes > 1:
        print("the initial-vs-trained evaluation needs the greedy diagnostics (vcb.eval_greedy, eval_at_start) "
              "when training on several processes; skipped")
        return {}
    c = recipe.vcb
    result = evaluate_systems(tokenizer, reward_set, records, out / "eval",
                              initial_and_trained(trainer.unwrapped.model, trainer),
                              max_new_tokens=c.eval_max_new_tokens, batch_size=c.eval_batch_size, seed=recipe.seed,
                              run_label=f"VCB training run {out}", normalizers=str(recipe.samples_dir() /
                                                                                    "reward_state.json"),
                              texts=texts, rewards_spec=recipe.rewards)
    write_text_atomic(out / "eval.json", json.dumps(result, indent=2, default=str))
    return result


CALIBRATION = (
    ("eval/greedy_reward_mean", "mean combined reward (what training aims at) of greedy answers to the held-out "
                                "prompts"),
    ("eval/ranking_accuracy", "share of held-out candidate pairs that the policy's log-ratio to the reference "
                              "(Δρ) orders as the reward does"),
    ("eval/corr", "correlation of β·Δρ with the reward gap of held-out pairs (VCB's aim: log-ratios that track the "
                  "reward values; undefined before training, when Δρ is 0)"),
)


def calibration_lines(history: list[dict], width: int = 80) -> list[str]:
    """The held-out diagnostics, initial (step 0) → trained (last evaluation), each with a line on its meaning."""
    evals = [m for m in history if any(k.startswith("eval/") for k in m)]
    if not evals:
        return []
    first = next((m for m in evals if m.get("step") == 0), None)
    last = evals[-1]

    def num(m, k):
        v = None if m is None else m.get(k)
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = [f"Held-out diagnostics, initial (step 0) → trained (step {last.get('step')}):"]
    for key, meaning in CALIBRATION:
        if key in last:
            lines += textwrap.wrap(f"- {key[5:]} {num(first, key)} → {num(last, key)}: {meaning}.", width=width,
                                   subsequent_indent="  ")
    return lines


def write_vcb_report(recipe: VCBRecipe, out: Path, history: list[dict], result: dict, summary: dict) -> Path:
    """``out/report.md``: the result in words with the paired-difference plot, example answers side by side,
    every metric, the held-out calibration numbers and the training curves (as `alarm run`'s report)."""
    c = recipe.vcb
    lines = [f"# {recipe.name}: offline training report ({c.loss})", "",
             f"- policy: `{recipe.model.name}`, loss `{c.loss}`, β {c.beta}, learning rate {c.learning_rate:g}, "
             f"{summary['steps']} steps on {summary['pairs']} pairs of scored candidates "
             f"(`{recipe.samples_dir() / 'dataset'}`)", ""]
    if result:
        lines += evaluation_markdown(result, out, heading="Result (greedy answers, held-out prompts)")
    calibration = calibration_lines(history, width=10_000)
    if calibration:
        lines += ["## Calibration on held-out candidate pairs", "", *calibration, ""]
    lines += training_markdown([m for m in history if "loss" in m], out, VCB_PANELS)
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def _sample_cmd(args) -> int:
    run_sample(load_vcb_recipe(args.config, args.overrides), overwrite=args.overwrite)
    return 0


def _train_cmd(args) -> int:
    resume_arg(args)
    run_train(load_vcb_recipe(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    return 0


def add_commands(subparsers) -> None:
    """Add ``vcb`` with ``sample`` and ``train`` to the ``alarm`` command."""
    vcb = subparsers.add_parser("vcb", help="offline value-based calibration (VCB) with DPO/IPO baselines",
                                description=__doc__.split("\n\n")[0])
    sub = vcb.add_subparsers(dest="vcb_command", required=True, metavar="STEP")
    for name, fn, text in (("sample", _sample_cmd, "sample and score N candidates per prompt (resumable)"),
                           ("train", _train_cmd, "train on pairs of the scored candidates")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, help="recipe YAML (e.g. src/alarm/recipes/vcb_quickstart.yaml)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. vcb.loss=dpo")
        mode = p.add_mutually_exclusive_group()
        if name == "train":
            mode.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH", help=RESUME_HELP)
        mode.add_argument("--overwrite", action="store_true", help=f"replace earlier {name} output (after every "
                          "input was checked)")
        p.set_defaults(handler=fn)
