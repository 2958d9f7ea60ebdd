"""alarm.outputs: an output path that is a file, or a directory that cannot be written, is one line (rc 2) before
any work starts — for generate, score, select, compare, rm train, sft and qa-feedback prepare (issue 18,
item 5)."""

from __future__ import annotations

import json

import pytest

from alarm import outputs
from alarm.cli import main
from alarm.errors import AlarmError


@pytest.fixture()
def blocker(tmp_path):
    """A plain file where a command's output directory would go."""
    f = tmp_path / "taken"
    f.write_text("not a directory\n")
    return f


def _scored(tmp_path):
    p = tmp_path / "a.scored.jsonl"
    p.write_text("".join(json.dumps({"prompt_id": str(i), "sample": s, "prompt": "q", "completion": "c",
                                     "scores": {"holistic": float(i + s), "m": float(s)}}) + "\n"
                         for i in range(3) for s in (0, 1)))
    return p


def _commands(tmp_path, blocker):
    """Each command with its output under a file; inputs that would fail later (a missing policy, a missing
    data file) show that the output is checked first."""
    rewards = tmp_path / "rewards.yaml"
    rewards.write_text("holistic: {type: length}\n")
    gens = tmp_path / "g.jsonl"
    gens.write_text(json.dumps({"prompt_id": "0", "sample": 0, "prompt": "q", "completion": "c"}) + "\n")
    scored = _scored(tmp_path)
    rm = tmp_path / "rm.yaml"
    rm.write_text(f"kind: factuality\ndata: {tmp_path / 'missing.json'}\n")
    return {
        "generate": ["generate", "--policy", str(tmp_path / "no-such-model"), "--out", str(blocker / "g.jsonl")],
        "score --out": ["score", str(gens), "--rewards", str(rewards), "--out", str(blocker / "s.jsonl")],
        "score --out-dir": ["score", str(gens), "--rewards", str(rewards), "--out-dir", str(blocker)],
        "select": ["select", str(scored), "--out-dir", str(blocker / "sel")],
        "compare": ["compare", str(scored), str(scored), "--names", "a,b", "--out-dir", str(blocker)],
        "rm train": ["rm", "train", "--config", str(rm), "--out", str(blocker / "rm")],
        "sft": ["sft", f"data={tmp_path / 'missing.jsonl'}", f"output_dir={blocker}/sft"],
        "qa-feedback prepare": ["qa-feedback", "prepare", "--prompts", str(tmp_path / "missing.json"), "--out",
                                str(blocker / "data.jsonl")],
    }


@pytest.mark.parametrize("command", ["generate", "score --out", "score --out-dir", "select", "compare", "rm train",
                                     "sft", "qa-feedback prepare"])
def test_an_output_under_a_file_is_one_line_before_any_work(tmp_path, blocker, capsys, command):
    argv = _commands(tmp_path, blocker)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("alarm: error: ") and err.count("\n") == 1, err
    assert f"{blocker} is a file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["taken", "rewards.yaml", "g.jsonl", "a.scored.jsonl", "rm.yaml"])  # nothing written


def test_an_output_that_is_a_directory_or_cannot_be_written(tmp_path, monkeypatch):
    with pytest.raises(AlarmError, match=f"--out {tmp_path} is a directory; give a file path"):
        outputs.check_output_file(tmp_path, "--out")
    assert outputs.check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"  # created later
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)  # as a non-root user without permission
    with pytest.raises(AlarmError, match=f"--out-dir {tmp_path / 'new'}: cannot write in {tmp_path}"):
        outputs.check_output_dir(tmp_path / "new", "--out-dir")
