"""`alarm rm train --config rm.yaml` and `alarm rm evaluate --model DIR`: reward models from QA-Feedback."""

from __future__ import annotations

from pathlib import Path

from alarm.config import read_settings, validate_settings
from alarm.errors import AlarmError
from alarm.outputs import check_output_dir
from alarm.reward_models.evaluate import evaluate_reward_model
from alarm.reward_models.train import RMTrainConfig, train_reward_model


def load_config(path: str | Path, overrides: list[str] | None = None) -> RMTrainConfig:
    if not Path(path).exists():
        raise AlarmError(f"reward-model config {path} not found; see recipes/rm_*.yaml")
    data = read_settings(path, overrides)
    try:
        return validate_settings(RMTrainConfig, data)
    except AlarmError as e:
        raise AlarmError(f"{path}: {e}") from None


def cmd_train(args) -> int:
    config = load_config(args.config, args.overrides)
    if args.out:
        config.output_dir = args.out
    check_output_dir(config.out_dir(), "output directory" if args.out is None else "--out")
    stats = train_reward_model(config)
    print(f"saved {config.kind} reward model to {config.out_dir()} ({stats['train_seconds']} s training)")
    return 0


def cmd_evaluate(args) -> int:
    evaluate_reward_model(args.model, data=args.data)
    return 0


def add_commands(subparsers) -> None:
    """``alarm rm train --config rm.yaml`` and ``alarm rm evaluate --model DIR``."""
    p = subparsers.add_parser("rm", help="train and evaluate reward models from QA-Feedback",
                              description="train and evaluate reward models from QA-Feedback")
    sub = p.add_subparsers(dest="rm_command", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="train one reward model (holistic, factuality, relevance, completeness)")
    t.add_argument("--config", required=True, help="YAML config (see recipes/rm_*.yaml)")
    t.add_argument("--out", help="output directory (default runs/rm/<kind>)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=1")
    t.set_defaults(handler=cmd_train)
    e = sub.add_parser("evaluate", help="held-out quality of a trained reward model vs trivial baselines")
    e.add_argument("--model", required=True, help="directory written by `alarm rm train`")
    e.add_argument("--data", help="feedback file (default: the one the model was trained from)")
    e.set_defaults(handler=cmd_evaluate)
