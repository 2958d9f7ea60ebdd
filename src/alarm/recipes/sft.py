"""`alarm sft`: supervised fine-tuning of a translation policy (the paper SFT'd mT5 on Europarl before PPO).

    alarm sft data=tests/data/mt_pairs.jsonl model=smollm2-135m-instruct epochs=1
    alarm sft --config my_sft.yaml learning_rate=1e-4
"""

from __future__ import annotations

from alarm.config import read_settings, validate_settings
from alarm.trainers.sft import SFTConfig, run_sft


def load_sft_config(path: str | None, overrides: list[str] | None = None) -> SFTConfig:
    """YAML file (optional) + ``key=value`` overrides → a validated :class:`SFTConfig`."""
    return validate_settings(SFTConfig, read_settings(path, overrides))


def _handle(args) -> int:
    config = load_sft_config(args.config, args.overrides)
    m = run_sft(config)
    print(f"SFT done: {config.eval_split} loss {m['eval_loss_before']:.3f} -> {m['eval_loss_after']:.3f}, "
          f"BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f} on {m['eval_pairs']} pairs; model in {m['model_dir']}")
    return 0


def add_commands(subparsers) -> None:
    """Add ``alarm sft`` to the CLI."""
    p = subparsers.add_parser(
        "sft", help="supervised fine-tuning of a translation policy on parallel pairs (BLEU/chrF after)",
        description="Fine-tune a seq2seq or causal policy on Spanish→English pairs with transformers' Trainer. "
                    "Settings: " + ", ".join(SFTConfig.model_fields) + ".")
    p.add_argument("--config", default=None, help="YAML file of SFT settings")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, e.g. data=pairs.jsonl epochs=1")
    p.set_defaults(handler=_handle)
