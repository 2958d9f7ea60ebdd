"""alarm.progress: a bar on a terminal, plain periodic lines in a log (issue 18 item 9); the trainers and the
generation loop use it; transformers' loading bars are quiet unless ALARM_HF_LOGS asks for them."""

from __future__ import annotations

import io

import pytest
import tiny
from test_ppo import trainer as ppo_trainer
from test_vcb import _trainer as vcb_trainer

from alarm import progress as progress_module
from alarm.generation import generate_texts
from alarm.progress import Progress


def test_a_log_gets_a_line_every_tenth_and_at_the_end():
    out = io.StringIO()  # not a terminal
    with Progress("scoring", 25, stream=out) as bar:
        for _ in range(25):
            bar.update(advance=1, info="x")
    lines = out.getvalue().splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == \
        ["3/25", "5/25", "8/25", "10/25", "13/25", "15/25", "18/25", "20/25", "23/25", "25/25"]
    assert lines[-1].startswith("scoring: 25/25 (100%), ") and lines[-1].endswith("; x")


def test_a_log_gets_a_line_every_30_seconds_between_tenths(monkeypatch):
    clock = iter([0.0, 31.0, 40.0, 75.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    with Progress("PPO", 1000, stream=out) as bar:  # starts at t=0
        bar.update(completed=1)  # t=31: a line though < 10 %
        bar.update(completed=2)  # t=40: quiet
        bar.update(completed=3)  # t=75: a line
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["PPO: 1/1000 (0%)", "PPO: 3/1000 (0%)"]


def test_disabled_shows_nothing_and_a_terminal_gets_the_rich_bar():
    out = io.StringIO()
    with Progress("x", 3, stream=out, enabled=False) as bar:
        bar.update(advance=3)
    assert out.getvalue() == ""
    with Progress("x", 3, stream=out, interactive=True, transient=False) as bar:
        bar.update(advance=3)
    assert "3/3" in out.getvalue()


def test_generation_and_both_trainers_print_plain_lines_to_a_log(tmp_path, capsys):
    model, tok = tiny.causal_lm(0), tiny.tokenizer()
    generate_texts(model, tok, ["a", "b", "c"], max_new_tokens=2, batch_size=1, progress="sampling")
    ppo_trainer(tmp_path / "ppo", steps=2).train()
    vcb_trainer(tmp_path / "vcb", max_steps=2).train()
    err = capsys.readouterr().err
    assert "sampling: 3/3 (100%)" in err
    assert "PPO: 1/2 (50%)" in err and "PPO: 2/2 (100%)" in err and "return " in err
    assert "VCB: 2/2 (100%)" in err


@pytest.mark.parametrize("env, shown", [(None, False), ("0", False), ("1", True)])
def test_transformers_loading_bars_are_quiet_unless_asked_for(tmp_path, monkeypatch, capsys, env, shown):
    from transformers.utils import logging as hf_logging

    from alarm.models import load_policy, quiet_transformers

    was = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    if env is not None:
        monkeypatch.setenv("ALARM_HF_LOGS", env)
    tiny.causal_lm(0).save_pretrained(tmp_path)
    tiny.tokenizer().save_pretrained(tmp_path)
    try:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_warning()  # transformers' default
        quiet_transformers()
        capsys.readouterr()
        load_policy(str(tmp_path))
        assert ("Loading weights" in capsys.readouterr().err) is shown
        assert (hf_logging.get_verbosity() <= hf_logging.WARNING) is shown
    finally:
        hf_logging.enable_progress_bar() if was[0] else hf_logging.disable_progress_bar()
        hf_logging.set_verbosity(was[1])
