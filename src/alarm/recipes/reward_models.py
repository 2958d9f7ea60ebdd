"""`alarm rm train --config rm.yaml` and `alarm rm evaluate`: reward models from QA-Feedback.

``alarm rm evaluate --config rm.yaml`` is the number to report: k-fold cross-validation by question over every
question of the data (mean ± std of the model and its trivial baselines). ``--model DIR`` scores one trained
model on the questions its training held out.
"""

from __future__ import annotations

from pathlib import Path

from alarm.config import read_settings, validate_settings
from alarm.errors import AlarmError
from alarm.outputs import check_output_dir
from alarm.reward_models.evaluate import evaluate_reward_model, format_cv
from alarm.reward_models.train import RMTrainConfig, cross_validate, train_reward_model


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
    if (args.model is None) == (args.config is None):
        raise AlarmError("give --config rm.yaml (cross-validation, the number to report) or --model DIR (one "
                         "trained model on its held-out questions), not both")
    if args.model is not None:
        if args.overrides or args.folds is not None:
            raise AlarmError("--folds and key=value overrides go with --config, not --model")
        evaluate_reward_model(args.model, data=args.data)
        return 0
    config = load_config(args.config, args.overrides)
    if args.data:
        config.data = args.data
    config.output_dir = args.out or f"{config.out_dir()}-cv"
    check_output_dir(config.out_dir(), "output directory" if args.out is None else "--out")
    summary = cross_validate(config, folds=args.folds or 5)
    print(format_cv(summary))
    print(f"wrote {config.out_dir() / 'cv.json'}")
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
    e = sub.add_parser("evaluate", help="cross-validated (--config) or held-out (--model) quality vs trivial baselines")
    e.add_argument("--config", help="YAML config: k-fold cross-validation by question over all its questions")
    e.add_argument("--folds", type=int, help="folds for --config (default 5)")
    e.add_argument("--out", help="output directory for --config (default <output_dir>-cv)")
    e.add_argument("--model", help="directory written by `alarm rm train`: scored on its held-out questions")
    e.add_argument("--data", help="feedback file (default: the config's, or the one the model was trained from)")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides with --config")
    e.set_defaults(handler=cmd_evaluate)
