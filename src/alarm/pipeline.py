"""An ALaRM experiment from a recipe, step by step: sample → fit → select → train → evaluate → report.

`alarm run --config recipe.yaml` runs every step; `alarm train` runs fit + train; `alarm quickstart` runs the
packaged offline demo recipe. Each step writes its outputs into the run directory.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from alarm.combine import RewardSet
from alarm.config import Recipe, build_reward_set, load_recipe
from alarm.errors import AlarmError
from alarm.rewards.base import summarize

console = Console()


# ------------------------------------------------------------------------------------------------ loading


def load_policy(recipe: Recipe):
    """(model, tokenizer) of the recipe's initial policy."""
    from alarm.models import load_policy as load

    return load(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)


def prompt_records(recipe: Recipe, tokenizer, split: str, seq2seq: bool = False) -> list[dict]:
    """The recipe's records of one split as policy inputs (``prompt``) plus the columns rewards read."""
    if recipe.data.task == "mt":
        from alarm import mt

        splits = mt.load_splits(recipe.data.path)
        if split not in splits:
            raise AlarmError(f"the MT data has no split {split!r} (has {', '.join(splits)}); check data.*_split")
        return mt.prompt_records(splits[split], tokenizer, seq2seq=seq2seq)
    from alarm.datasets import format_prompt, load_qa_jsonl, split_records

    records = split_records(load_qa_jsonl(recipe.data.path), split)
    if not records:
        raise AlarmError(f"the data has no records in split {split!r}; check data.path and the split names")
    return [{"id": r.id, "prompt": format_prompt(tokenizer, r.question, r.passages, recipe.data.system_prompt),
             "question": r.question, "passages": list(r.passages), "reference": r.reference} for r in records]


def _columns(records: list[dict]) -> dict[str, list]:
    """Every column of the records except the policy input, one entry per record, for the rewards."""
    return {k: [r[k] for r in records] for k in records[0] if k not in ("id", "prompt")}


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


# ------------------------------------------------------------------------------------------------ steps


def sample_and_fit(recipe: Recipe, model, tokenizer, records: list[dict], reward_set: RewardSet, run_dir: Path):
    """(a) Sample the initial policy, fit normalisation (and ε) on the samples, keep them for selection."""
    from alarm.generation import generate_texts

    s = recipe.sample
    chosen = records[: s.prompts]
    outs = generate_texts(model, tokenizer, [r["prompt"] for r in chosen], max_new_tokens=s.max_new_tokens,
                          do_sample=True, num_samples=s.samples_per_prompt, temperature=recipe.ppo.temperature,
                          top_p=recipe.ppo.top_p, top_k=recipe.ppo.top_k, batch_size=s.batch_size,
                          progress="sampling the initial policy")
    flat = [(r, k, text) for r, texts in zip(chosen, outs) for k, text in enumerate(texts)]
    flat_records = [r for r, _, _ in flat]
    texts = [t for _, _, t in flat]
    raw = reward_set.fit([r["question"] for r in flat_records], texts, **_columns(flat_records))
    norm = reward_set.normalized(raw)
    samples = [{"prompt_id": r["id"], "sample": k, "completion": t,
                **{name: summarize(norm[name][i]) for name in norm}}
               for i, (r, k, t) in enumerate(flat)]
    with open(run_dir / "initial_samples.jsonl", "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in samples)
    write_json(run_dir / "reward_state.json", reward_set.state())
    return samples


def select_step(recipe: Recipe, reward_set: RewardSet, samples: list[dict], run_dir: Path) -> list[str]:
    """(b) Which aspects agree with the holistic reward on pairs of initial samples; returns the kept ones."""
    from alarm.select import (
        compute_stats,
        pairs_from_samples,
        plot_selection,
        select_aspects,
        selection_markdown,
        selection_to_json,
    )

    aspects = list(reward_set.aspects)
    if not aspects:
        return []
    two = [x for x in samples if x["sample"] < 2]
    h_a, h_b, m_a, m_b = pairs_from_samples(two, holistic="holistic", aspects=aspects)
    hib = {k: getattr(reward_set.aspects[k], "higher_is_better", True) for k in aspects}
    stats = compute_stats(h_a, h_b, m_a, m_b, higher_is_better=hib)
    sel = recipe.selection
    selection = select_aspects(stats, max_conflict=sel.max_conflict, top_k=sel.top_k, min_decisive=sel.min_decisive)
    write_json(run_dir / "selection.json", selection_to_json(stats, selection))
    (run_dir / "selection.md").write_text(selection_markdown(stats, selection))
    plot_selection(stats, selection, run_dir / "selection.png")
    console.print("[bold]Reward selection[/bold] (pairs of initial samples, against the holistic reward)")
    for name in aspects:
        mark = "[green]kept[/green]" if name in selection.kept else "[red]dropped[/red]"
        console.print(f"  {mark} {name}: {selection.reasons[name]}")
    return list(selection.kept)


def train_step(recipe: Recipe, model, tokenizer, reward_set: RewardSet, records: list[dict], run_dir: Path,
               resume: bool = False):
    """(c) PPO on the training prompts; returns the trainer (its policy holds the trained adapters)."""
    from alarm.trainers.ppo import PPOTrainer

    trainer = PPOTrainer(recipe.ppo, model, tokenizer, reward_set, records, run_dir)
    if resume:
        start = trainer.resume()
        if start:
            console.print(f"resuming from step {start}")
    trainer.train()
    return trainer


def evaluate_step(recipe: Recipe, model, tokenizer, reward_set: RewardSet, records: list[dict], run_dir: Path,
                  systems: dict) -> dict:
    """(d) Greedy outputs of each system on the test prompts: mean of every reward, win rates, length."""
    from alarm.generation import generate_texts

    e = recipe.eval
    chosen = records[: e.max_prompts] if e.max_prompts else records
    prompts = [r["prompt"] for r in chosen]
    per_system = {}
    for name, ctx in systems.items():
        with ctx():
            texts = [t[0] for t in generate_texts(model, tokenizer, prompts, max_new_tokens=e.max_new_tokens,
                                                  batch_size=e.batch_size, progress=f"evaluating {name}")]
        raw = reward_set.raw_scores([r["question"] for r in chosen], texts, **_columns(chosen))
        norm = reward_set.normalized(raw)
        scores = {k: [summarize(v) for v in vals] for k, vals in norm.items()}
        scores["length_words"] = [float(len(t.split())) for t in texts]
        per_system[name] = {"texts": texts, "scores": scores}
    with open(run_dir / "eval_generations.jsonl", "w") as f:
        for i, r in enumerate(chosen):
            row = {"prompt_id": r["id"], "question": r["question"], "reference": r["reference"]}
            for name, out in per_system.items():
                row[name] = {"completion": out["texts"][i], **{k: v[i] for k, v in out["scores"].items()}}
            f.write(json.dumps(row) + "\n")
    names = list(systems)
    result = {"n_prompts": len(chosen), "means": {}, "win_rates": {}}
    for name in names:
        result["means"][name] = {k: _mean(v) for k, v in per_system[name]["scores"].items()}
    a, b = names[-1], names[0]  # trained vs initial
    for metric in per_system[a]["scores"]:
        result["win_rates"][metric] = win_rate(per_system[a]["scores"][metric], per_system[b]["scores"][metric])
    write_json(run_dir / "eval.json", result)
    return result


def _mean(xs) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def win_rate(a: list, b: list, higher_is_better: bool = True) -> dict:
    """Pairwise wins of ``a`` over ``b`` by one metric: wins / (wins + losses), ties and missing excluded."""
    from dataclasses import asdict

    from alarm.evaluation.compare import win_counts

    return asdict(win_counts(a, b, higher_is_better=higher_is_better))


# ------------------------------------------------------------------------------------------------ report


def write_report(recipe: Recipe, run_dir: Path, history: list[dict], result: dict | None, kept: list[str] | None,
                 timings: dict) -> Path:
    """report.md with plots of training curves and a before/after chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"# {recipe.name}: ALaRM run report", ""]
    lines += [f"- policy: `{recipe.model.name}`, mode `{recipe.combine_config().mode}`, "
              f"{len(history)} PPO steps × {recipe.ppo.rollout_batch_size} prompts", ""]
    if kept is not None:
        lines += ["## Reward selection", "", (run_dir / "selection.md").read_text(), "",
                  "![selection](selection.png)", ""]
    if history:
        steps = [m["step"] for m in history]
        panels = [("rewards", [k for k in history[0] if k.startswith("rewards/") and k.endswith("/mean")]),
                  ("gate-open rate", ["gate_open_rate"]), ("KL to reference", ["kl"]),
                  ("response length (tokens)", ["length/tokens"])]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
        for ax, (title, keys) in zip(axes, panels):
            for k in keys:
                ax.plot(steps, [m.get(k, math.nan) for m in history], label=k.removeprefix("rewards/"))
            ax.set_title(title)
            ax.set_xlabel("step")
            if len(keys) > 1:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run_dir / "training.png", dpi=110)
        plt.close(fig)
        lines += ["## Training", "", "![training curves](training.png)", ""]
    if result:
        systems = list(result["means"])
        metrics = list(result["means"][systems[0]])
        lines += ["## Evaluation (greedy, test prompts)", "", f"{result['n_prompts']} test prompts.", "",
                  "| metric | " + " | ".join(systems) + " | win rate (trained vs initial) |",
                  "|---|" + "---|" * len(systems) + "---|"]
        for k in metrics:
            w = result["win_rates"][k]
            wr = "n/a" if w["win_rate"] is None else f"{w['win_rate']:.0%} ({w['wins']}–{w['losses']}, {w['ties']} ties)"
            vals = " | ".join(_fmt(result["means"][s][k]) for s in systems)
            lines.append(f"| {k} | {vals} | {wr} |")
        fig, ax = plt.subplots(figsize=(6, 3.2))
        width = 0.8 / len(systems)
        for j, s in enumerate(systems):
            ax.bar([i + j * width for i in range(len(metrics))],
                   [result["means"][s][k] or 0.0 for k in metrics], width, label=s)
        ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(metrics))], metrics, rotation=20,
                      fontsize=8)
        ax.legend()
        ax.set_title("before / after (means)")
        fig.tight_layout()
        fig.savefig(run_dir / "before_after.png", dpi=110)
        plt.close(fig)
        lines += ["", "![before/after](before_after.png)", ""]
    lines += ["## Timings", "", *[f"- {k}: {v:.0f} s" for k, v in timings.items()], ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def print_summary(result: dict) -> None:
    systems = list(result["means"])
    table = Table(title=f"Evaluation on {result['n_prompts']} test prompts (greedy)")
    table.add_column("metric")
    for s in systems:
        table.add_column(s, justify="right")
    table.add_column("win rate (trained vs initial)", justify="right")
    for k in result["means"][systems[0]]:
        w = result["win_rates"][k]
        wr = "n/a" if w["win_rate"] is None else f"{w['win_rate']:.0%} ({w['wins']}–{w['losses']}, {w['ties']} ties)"
        table.add_row(k, *[_fmt(result["means"][s][k]) for s in systems], wr)
    console.print(table)


# ------------------------------------------------------------------------------------------------ commands


def run(recipe: Recipe, steps: tuple[str, ...] = ("sample", "select", "train", "eval"), resume: bool = False) -> dict:
    """Run the recipe's steps in order; returns the evaluation result (if evaluated)."""
    import torch

    torch.manual_seed(recipe.seed)
    run_dir = recipe.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh run replaces an earlier run's training record instead of appending to it
        import shutil

        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tokenizer = load_policy(recipe)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    train_records = prompt_records(recipe, tokenizer, recipe.data.train_split, seq2seq)
    if recipe.data.max_train_prompts:
        train_records = train_records[: recipe.data.max_train_prompts]
    reward_set = build_reward_set(recipe)
    timings["load"] = time.perf_counter() - t0

    kept = None
    state_file = run_dir / "reward_state.json"
    if resume and state_file.exists():
        reward_set.load_state(json.loads(state_file.read_text()))
        samples = [json.loads(x) for x in (run_dir / "initial_samples.jsonl").read_text().splitlines()]
    else:
        t0 = time.perf_counter()
        console.print(f"[bold](a)[/bold] sampling the initial policy on {recipe.sample.prompts} prompts")
        samples = sample_and_fit(recipe, model, tokenizer, train_records, reward_set, run_dir)
        timings["sample + fit"] = time.perf_counter() - t0
    if "select" in steps and recipe.selection.enabled and reward_set.aspects:
        console.print("[bold](b)[/bold] reward selection")
        kept = select_step(recipe, reward_set, samples, run_dir)
        if recipe.selection.apply and set(kept) != set(reward_set.aspects):
            state = reward_set.state()
            reward_set = build_reward_set(recipe, aspects=kept)
            reward_set.load_state({"normalizers": {k: v for k, v in state["normalizers"].items()
                                                   if k == "holistic" or k in kept}, "epsilon": state["epsilon"]})
            if not kept:
                console.print("[yellow]no aspect kept: training on the holistic reward alone[/yellow]")
    history: list[dict] = []
    trainer = None
    if "train" in steps:
        t0 = time.perf_counter()
        console.print(f"[bold](c)[/bold] PPO ({reward_set.config.mode}) for {recipe.ppo.steps} steps")
        trainer = train_step(recipe, model, tokenizer, reward_set, train_records, run_dir, resume=resume)
        history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        timings["train"] = time.perf_counter() - t0
    result = None
    if "eval" in steps:
        t0 = time.perf_counter()
        console.print("[bold](d)[/bold] evaluating initial and trained policies on the test prompts")
        test_records = prompt_records(recipe, tokenizer, recipe.data.test_split, seq2seq)
        policy = trainer.unwrapped.model if trainer else model
        systems = {"initial": (policy.disable_adapter if trainer and recipe.ppo.lora else nullcontext)}
        if trainer:
            systems["trained"] = nullcontext
        result = evaluate_step(recipe, policy, tokenizer, reward_set, test_records, run_dir, systems)
        timings["eval"] = time.perf_counter() - t0
    report = write_report(recipe, run_dir, history, result, kept, timings)
    if result and "trained" in result["means"]:
        print_summary(result)
    console.print(f"report: {report}")
    return result or {}


def _recipe_from_args(args) -> Recipe:
    recipe = load_recipe(args.config, args.overrides)
    if getattr(args, "out", None):
        recipe.output_dir = args.out
    return recipe


def cmd_run(args) -> int:
    run(_recipe_from_args(args), resume=args.resume)
    return 0


def cmd_train(args) -> int:
    run(_recipe_from_args(args), steps=("sample", "train"), resume=args.resume)
    return 0


def cmd_quickstart(args) -> int:
    from importlib import resources

    path = resources.files("alarm") / "recipes" / "quickstart.yaml"
    args.config = str(path)
    run(_recipe_from_args(args), resume=args.resume)
    return 0


def add_commands(sub) -> None:
    for name, handler, needs_config, help_ in [
        ("run", cmd_run, True, "run a recipe end to end: sample, fit, select, train, evaluate, report"),
        ("train", cmd_train, True, "fit normalisation on initial samples, then train with PPO"),
        ("quickstart", cmd_quickstart, False, "the offline demo: ALaRM PPO on the packaged QA set"),
    ]:
        p = sub.add_parser(name, help=help_, description=help_)
        if needs_config:
            p.add_argument("--config", required=True, help="recipe YAML (see recipes/)")
        p.add_argument("--out", help="run directory (default runs/<recipe name>)")
        p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. ppo.steps=10")
        p.set_defaults(handler=handler)
