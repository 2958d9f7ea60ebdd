"""An ALaRM experiment from a recipe, step by step: sample → fit → select → train → evaluate → report.

`alarm run --config recipe.yaml` runs every step; `alarm train` runs fit + train; `alarm quickstart` runs the
packaged offline demo recipe. Each step writes its outputs into the run directory.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import yaml
from rich.console import Console

from alarm import checkpoints
from alarm.combine import RewardSet
from alarm.config import Recipe, build_reward_set, load_recipe
from alarm.data.prompts import prompt_records, reward_inputs
from alarm.errors import AlarmError
from alarm.evaluation.plots import PPO_PANELS
from alarm.evaluation.statistics import win_counts
from alarm.generation import generate_texts
from alarm.io import claim_run_dir, write_json_atomic, write_jsonl_atomic, write_text_atomic
from alarm.models import is_seq2seq, load_policy
from alarm.outputs import check_output_dir
from alarm.recipes.report import evaluate_systems, evaluation_markdown, print_result, training_markdown
from alarm.rewards.base import summarize
from alarm.selection import pair_up, pairs_from_samples, run_selection
from alarm.trainers.ppo import PPOTrainer

console = Console()


# ------------------------------------------------------------------------------------------------ steps


def sample_and_fit(recipe: Recipe, model, tokenizer, records: list[dict], reward_set: RewardSet, run_dir: Path,
                   selection_pairs: bool = True):
    """(a) Sample the initial policy, fit normalisation (and ε) on the samples, keep them for selection.

    For the paper's selection pairs (``selection.pairs: greedy_vs_sample``) it also writes the initial policy's
    greedy output and one pure sample (T 1, top-p 1, top-k 0; sample 0 when PPO samples so) per prompt, scored
    with the fitted normalisers, to ``selection_pairs.jsonl``.
    """

    s = recipe.sample
    chosen = records[: s.prompts]
    prompts = [r["prompt"] for r in chosen]
    outs = generate_texts(model, tokenizer, prompts, max_new_tokens=s.max_new_tokens,
                          do_sample=True, num_samples=s.samples_per_prompt, temperature=recipe.ppo.temperature,
                          top_p=recipe.ppo.top_p, top_k=recipe.ppo.top_k, batch_size=s.batch_size,
                          progress="sampling the initial policy")
    flat = [(r, k, text) for r, texts in zip(chosen, outs) for k, text in enumerate(texts)]
    flat_records = [r for r, _, _ in flat]
    texts = [t for _, _, t in flat]
    prompts_r, columns = reward_inputs(flat_records)
    raw = reward_set.fit(prompts_r, texts, **columns)
    _print_prompt_cuts(reward_set, len(texts))
    norm = reward_set.normalized(raw)
    samples = [{"prompt_id": r["id"], "sample": k, "completion": t,
                **{name: summarize(norm[name][i], t) for name in norm}}
               for i, (r, k, t) in enumerate(flat)]
    write_jsonl_atomic(run_dir / "initial_samples.jsonl", samples)
    write_json_atomic(run_dir / "reward_state.json", reward_set.state())
    if selection_pairs and recipe.selection.enabled and recipe.selection.pairs == "greedy_vs_sample" \
            and reward_set.aspects:
        greedy = [t[0] for t in generate_texts(model, tokenizer, prompts, max_new_tokens=s.max_new_tokens,
                                               batch_size=s.batch_size, progress="greedy outputs of the initial policy")]
        sides = [("greedy", r, t) for r, t in zip(chosen, greedy)]
        pure = (recipe.ppo.temperature, recipe.ppo.top_p, recipe.ppo.top_k) == (1.0, 1.0, 0)
        if not pure:
            pure_texts = generate_texts(model, tokenizer, prompts, max_new_tokens=s.max_new_tokens, do_sample=True,
                                        temperature=1.0, top_p=1.0, top_k=0, batch_size=s.batch_size,
                                        progress="pure samples of the initial policy")
            sides += [("sample", r, t[0]) for r, t in zip(chosen, pure_texts)]
        prompts_r, columns = reward_inputs([r for _, r, _ in sides])
        scored = reward_set.normalized(reward_set.raw_scores(prompts_r, [t for *_, t in sides], **columns))
        rows = [{"prompt_id": r["id"], "side": side, "completion": t,
                 **{name: summarize(scored[name][i], t) for name in scored}} for i, (side, r, t) in enumerate(sides)]
        if pure:
            rows += [{"prompt_id": x["prompt_id"], "side": "sample", **{k: v for k, v in x.items() if k != "prompt_id"}}
                     for x in samples if x["sample"] == 0]
        write_jsonl_atomic(run_dir / "selection_pairs.jsonl", rows)
    return samples


def _print_prompt_cuts(reward_set: RewardSet, n: int) -> None:
    """Say how many inputs a reward model had to cut the prompt of (``last_stats`` of the latest call)."""
    for name, reward in [("holistic", reward_set.holistic), *reward_set.aspects.items()]:
        cut = (getattr(reward, "last_stats", None) or {}).get("prompts_cut", 0)
        if cut:
            console.print(f"[yellow]{name}: the prompt of {cut} of {n} inputs was cut to fit the reward model "
                          "(the response never is); raise its max_length or lower data.max_prompt_tokens[/yellow]")


def select_step(recipe: Recipe, reward_set: RewardSet, samples: list[dict], run_dir: Path) -> list[str]:
    """(b) Which aspects agree with the holistic reward on pairs of initial responses; returns the kept ones.

    Pairs (``selection.pairs``): the paper's greedy output vs pure sample per prompt (``selection_pairs.jsonl``
    from :func:`sample_and_fit`), or the first two samples. The report adds each reward's win rate of side a
    over side b, the holistic reward's own as the reference (the paper's Figures 3–4).
    """

    aspects = list(reward_set.aspects)
    if not aspects:
        return []
    sel = recipe.selection
    if sel.pairs == "greedy_vs_sample":
        path = run_dir / "selection_pairs.jsonl"
        if not path.exists():
            raise AlarmError(f"{path} is missing (a run from before greedy-vs-sample selection?); run again without "
                             "--resume, or set selection.pairs=two_samples")
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        a = {r["prompt_id"]: r for r in rows if r["side"] == "greedy"}
        b = {r["prompt_id"]: r for r in rows if r["side"] == "sample"}
        h_a, h_b, m_a, m_b = pair_up(a, b, holistic="holistic", aspects=aspects)
        sides, described = ("greedy", "sample"), "the initial policy's greedy output vs a pure sample per prompt"
    else:
        two = [x for x in samples if x["sample"] < 2]
        h_a, h_b, m_a, m_b = pairs_from_samples(two, holistic="holistic", aspects=aspects)
        sides, described = ("sample 1", "sample 2"), "two samples of the initial policy per prompt"
    hib = {k: getattr(reward_set.aspects[k], "higher_is_better", True) for k in aspects}
    _, selection, wins = run_selection((h_a, h_b, m_a, m_b), run_dir, higher_is_better=hib, sides=sides,
                                       max_conflict=sel.max_conflict, top_k=sel.top_k,
                                       min_decisive=sel.min_decisive, extra={"pairs": sel.pairs},
                                       header=f"Pairs: {len(h_a)}, {described}.\n\n")
    h = wins["holistic"]
    console.print(f"[bold]Reward selection[/bold] ({described}, against the holistic reward; holistic "
                  f"{sides[0]}-vs-{sides[1]} win rate {h['win_rate_pct']:.1f})")
    for name in aspects:
        mark = "[green]kept[/green]" if name in selection.kept else "[red]dropped[/red]"
        console.print(f"  {mark} {name}: {selection.reasons[name]}; win rate {wins[name]['win_rate_pct']:.1f}")
    return list(selection.kept)


def train_step(recipe: Recipe, model, tokenizer, reward_set: RewardSet, records: list[dict], run_dir: Path,
               resume: bool | str = False):
    """(c) PPO on the training prompts; returns the trainer (its policy holds the trained adapters).
    ``resume``: True for the newest intact checkpoint, or a checkpoint's path."""

    trainer = PPOTrainer(recipe.ppo, model, tokenizer, reward_set, records, run_dir)
    if resume:
        start = trainer.resume(resume if isinstance(resume, str) else None)
        if start:
            console.print(f"resuming from step {start}")
        else:
            console.print(f"no checkpoint in {run_dir / 'checkpoints'}: training starts fresh")
    trainer.train()
    return trainer


def evaluate_step(recipe: Recipe, tokenizer, reward_set: RewardSet, records: list[dict], run_dir: Path,
                  systems: dict) -> dict:
    """(d) Greedy outputs (or ``eval.samples`` samples per prompt) of each system on the test prompts, scored
    and compared exactly as `alarm generate` + `alarm score` + `alarm compare` do (the same functions): ``eval/<system>.jsonl`` (generations),
    ``eval/<system>.scored.jsonl`` (every reward, raw and with the run's normalisers), ``eval/report.md`` and
    ``compare.json`` (means, win-rate matrix, intervals). ``eval.json`` summarises trained vs initial.

    ``systems``: name → (model, context manager factory under which that model is the system), e.g. the LoRA
    policy with adapters disabled for "initial"."""

    e = recipe.eval
    chosen = records[: e.max_prompts] if e.max_prompts else records
    result = evaluate_systems(tokenizer, reward_set, chosen, run_dir / "eval", systems,
                              max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=recipe.seed,
                              run_label=f"run {run_dir}", rewards_config=str(run_dir / "config.yaml"),
                              normalizers=str(run_dir / "reward_state.json"),
                              rewards_spec=recipe.rewards, samples=e.samples, temperature=e.temperature)
    write_json_atomic(run_dir / "eval.json", result)
    return result


def initial_and_trained(model, trainer=None) -> dict:
    """The systems to evaluate: the initial policy, and the trained one after PPO.

    LoRA: one network, the initial policy being it with adapters disabled. Full fine-tuning trains ``model``
    in place, so the initial policy is the trainer's frozen reference copy (evaluating ``model`` twice would
    compare the trained policy with itself).
    """
    if trainer is None:
        return {"initial": (model, nullcontext)}
    policy = trainer.unwrapped
    if policy.ref_model is None:
        return {"initial": (policy.model, policy.model.disable_adapter), "trained": (policy.model, nullcontext)}
    return {"initial": (policy.ref_model, nullcontext), "trained": (policy.model, nullcontext)}


def _mean(xs) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def win_rate(a: list, b: list, higher_is_better: bool = True, n_boot: int = 2000, seed: int = 0) -> dict:
    """Pairwise wins of ``a`` over ``b`` by one metric (aligned by prompt): the paper's 100·wins / (wins + losses)
    (ties and missing excluded, 50 when none is decisive) with its bootstrap interval over prompts, the counts,
    and ``win_rate`` as a fraction (None when none is decisive)."""
    from dataclasses import asdict

    return asdict(win_counts(a, b, higher_is_better=higher_is_better, n_boot=n_boot, seed=seed))


# ------------------------------------------------------------------------------------------------ report


def write_report(recipe: Recipe, run_dir: Path, history: list[dict], result: dict | None, kept: list[str] | None,
                 timings: dict) -> Path:
    """report.md: the result in words with the paired-difference plot, example answers side by side, every
    metric's table, the reward selection and the training curves. Every mean, difference and win rate carries
    its bootstrap 95 % interval over the test prompts (from :func:`evaluate_step`'s comparison, ``eval/``)."""
    lines = [f"# {recipe.name}: ALaRM run report", ""]
    lines += [f"- policy: `{recipe.model.name}`, mode `{recipe.combine_config().mode}`, "
              f"{len(history)} PPO steps × {recipe.ppo.rollout_batch_size} responses "
              f"({recipe.ppo.samples_per_prompt} per prompt)", ""]
    if result:
        lines += evaluation_markdown(result, run_dir)
    lines += training_markdown(history, run_dir, PPO_PANELS)
    if kept is not None:
        lines += ["## Reward selection", "", (run_dir / "selection.md").read_text(), "",
                  "![selection](selection.png)", ""]
    lines += ["## Timings", "", *[f"- {k}: {v:.0f} s" for k, v in timings.items()], ""]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def print_summary(result: dict, report: Path | str | None = None) -> None:
    """The result in plain words, three example answers side by side, then where the full report is (80
    columns; the table of every metric is in report.md)."""
    print_result(result, report)


# ------------------------------------------------------------------------------------------------ commands


def run(recipe: Recipe, steps: tuple[str, ...] = ("sample", "select", "train", "eval"),
        resume: bool | str = False, overwrite: bool = False) -> dict:
    """Run the recipe's steps in order; returns the evaluation result (if evaluated).

    Every input (model, data, rewards, output directory) is checked before anything is written, so a typo
    never costs an earlier run: an existing run directory is only continued (``resume``: True, or the path of
    a checkpoint) or, with ``overwrite``, replaced after the checks passed."""
    import torch

    torch.manual_seed(recipe.seed)
    run_dir = check_output_dir(recipe.run_dir(), "run directory")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tokenizer = load_policy(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    seq2seq = is_seq2seq(model)
    train_records = prompt_records(recipe.data, tokenizer, recipe.data.train_split, seq2seq)
    if recipe.data.max_train_prompts:
        train_records = train_records[: recipe.data.max_train_prompts]
    test_records = prompt_records(recipe.data, tokenizer, recipe.data.test_split, seq2seq) \
        if "eval" in steps else []
    reward_set = build_reward_set(recipe)
    timings["load"] = time.perf_counter() - t0
    claim_run_dir(run_dir, bool(resume), overwrite)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))

    kept = None
    state_file = run_dir / "reward_state.json"
    if resume and state_file.exists() and (run_dir / "initial_samples.jsonl").exists():
        reward_set.load_state(json.loads(state_file.read_text()))
        samples = [json.loads(x) for x in (run_dir / "initial_samples.jsonl").read_text().splitlines()]
    else:
        t0 = time.perf_counter()
        console.print(f"[bold](a)[/bold] sampling the initial policy on {recipe.sample.prompts} prompts")
        samples = sample_and_fit(recipe, model, tokenizer, train_records, reward_set, run_dir,
                                 selection_pairs="select" in steps)
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
        systems = initial_and_trained(model, trainer)
        result = evaluate_step(recipe, tokenizer, reward_set, test_records, run_dir, systems)
        timings["eval"] = time.perf_counter() - t0
    report = write_report(recipe, run_dir, history, result, kept, timings)
    if result and "trained" in result["means"]:
        print_summary(result, report)
    else:
        console.print(f"report: {report}")
    return result or {}


def resume_arg(args) -> None:
    """``--resume key=value``: argparse took the first override for the optional PATH; give it back."""
    value = getattr(args, "resume", False)
    if isinstance(value, str) and "=" in value and not Path(value).exists():
        args.overrides.insert(0, value)
        args.resume = True
    elif isinstance(value, str):  # a checkpoint that is not there (or is damaged) is found before any work
        checkpoints.check_resume_path(value)


def _recipe_from_args(args) -> Recipe:
    resume_arg(args)
    recipe = load_recipe(args.config, args.overrides)
    if getattr(args, "out", None):
        recipe.output_dir = args.out
    return recipe


def cmd_run(args) -> int:
    run(_recipe_from_args(args), resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_train(args) -> int:
    run(_recipe_from_args(args), steps=("sample", "train"), resume=args.resume, overwrite=args.overwrite)
    return 0


# The demo's budget on a CUDA GPU: the CPU recipe takes about 4 minutes on 2 cores, most of it in sampling and
# the update of 8 prompts × 40 tokens per step; one GPU does a step of 4× the prompts in well under the CPU's
# time, so 4× the prompts per step and 4× the steps (16× the training samples) stay near the same wall time.
GPU_DEMO_SCALE = 4


def demo_budget(cuda: bool, bf16: bool) -> tuple[list[str], str]:
    """The quickstart's overrides for the machine it runs on, and the line that says so (the sizing rule of
    `make demo`): on the CPU the recipe as written; on a CUDA GPU ×GPU_DEMO_SCALE steps, prompts per step and
    selection prompts, in bf16 autocast where the GPU supports it (the passes of a rollout then all run in it)."""
    if not cuda:
        return [], "demo budget: CPU — 12 PPO steps × 8 prompts, as recipes/quickstart.yaml writes it"
    k = GPU_DEMO_SCALE
    overrides = [f"ppo.steps={12 * k}", f"ppo.rollout_batch_size={8 * k}", f"ppo.mini_batch_size={4 * k}",
                 f"sample.prompts={16 * k}"]
    precision = "bf16 autocast" if bf16 else "fp32 (this GPU has no bf16)"
    return overrides, (f"demo budget: CUDA GPU — {12 * k} PPO steps × {8 * k} prompts ({k}× the CPU demo's steps "
                       f"and prompts per step, about the same wall time), {precision}")


def cmd_quickstart(args) -> int:
    import os
    from importlib import resources

    import torch

    path = resources.files("alarm") / "recipes" / "quickstart.yaml"
    args.config = str(path)
    cuda = torch.cuda.is_available()  # False under CUDA_VISIBLE_DEVICES="" too
    bf16 = cuda and torch.cuda.is_bf16_supported()
    overrides, line = demo_budget(cuda, bf16)
    if bf16:  # accelerate's Accelerator() reads it (an explicit setting of the user's wins)
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")
    args.overrides = overrides + list(args.overrides)  # the user's key=value come last and win
    print(line, flush=True)
    run(_recipe_from_args(args), resume=args.resume, overwrite=args.overwrite)
    return 0


RESUME_HELP = ("continue the run: from its newest intact checkpoint (damaged ones are skipped, with a line "
               "saying so), or from the checkpoint directory PATH")


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
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH", help=RESUME_HELP)
        mode.add_argument("--overwrite", action="store_true",
                          help="replace an existing run in the output directory (after every input was checked)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. ppo.steps=10")
        p.set_defaults(handler=handler)
