"""Every bad input answered at the door: one line naming what is wrong and what to do, exit code 2, no
traceback — files that are not UTF-8, numbers out of range, outputs that would overwrite, checkpoints that are
not there or damaged, ports that do not exist, paths the system refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny

from alarm.cli import main

LATIN1 = "café".encode("latin-1")  # 0xe9 is not UTF-8 on its own
QS = Path(__file__).resolve().parents[1] / "src" / "alarm" / "recipes" / "quickstart.yaml"
VQS = QS.with_name("vcb_quickstart.yaml")


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A folder with the inputs every row needs: a tiny policy, good and bad files."""
    d = tmp_path_factory.mktemp("inputs")
    tiny.causal_lm().save_pretrained(d / "policy")
    tiny.tokenizer().save_pretrained(d / "policy")
    (d / "bad.yaml").write_bytes(b"name: x\nmodel: {name: " + LATIN1 + b"}\n")
    (d / "bad.jsonl").write_bytes(b'{"id": "1", "prompt": "' + LATIN1 + b'"}\n')
    (d / "bad_qa.jsonl").write_bytes(b'{"id": "1", "question": "' + LATIN1 + b'", "passages": []}\n')
    (d / "bad_scored.jsonl").write_bytes(b'{"prompt_id": "1", "sample": 0, "prompt": "q", "completion": "'
                                         + LATIN1 + b'", "scores": {"m": 1}}\n')
    good = {"prompt_id": "1", "sample": 0, "prompt": "q", "completion": "ok", "scores": {"m": 1.0}}
    (d / "good.jsonl").write_text(json.dumps(good) + "\n")
    (d / "empty.jsonl").write_text("")
    (d / "exists.jsonl").write_text("already here\n")
    (d / "rewards.yaml").write_text("holistic: {type: length, unit: chars}\n")
    damaged = d / "old_checkpoint"  # written by an older alarm (no manifest), its state cut short
    damaged.mkdir()
    (damaged / "trainer_state.json").write_text('{"step": 2, "lora": tr')
    return d


POLICY = "--policy {d}/policy"
TRAIN = "train --config " + str(QS) + " --out {d}/run model.name={d}/policy ppo.lora_layers=null"

# (command, expected one-line message): every row exits with 2 and prints that line only, no traceback.
BAD_INPUTS = [
    # files that are not UTF-8: the file and the byte offset
    ("train --config {d}/bad.yaml", r"recipe .*bad\.yaml is not UTF-8 text \(byte 0xe9 at offset 25"),
    (TRAIN + " data.path={d}/bad_qa.jsonl", r"QA data .*bad_qa\.jsonl is not UTF-8 text \(byte 0xe9 at offset 28"),
    ("generate " + POLICY + " --prompts {d}/bad.jsonl --out {d}/g.jsonl",
     r"prompt file .*bad\.jsonl is not UTF-8 text \(byte 0xe9 at offset 26"),
    ("score {d}/bad_scored.jsonl --rewards {d}/rewards.yaml --out {d}/s.jsonl",
     r"generation file .*bad_scored\.jsonl is not UTF-8 text \(byte 0xe9 at offset 65"),
    ("score {d}/good.jsonl --rewards {d}/bad.yaml --out {d}/s.jsonl", r"recipe .*bad\.yaml is not UTF-8"),
    ("compare {d}/bad_scored.jsonl {d}/good.jsonl --out-dir {d}/c",
     r"scored file .*bad_scored\.jsonl is not UTF-8 text \(byte 0xe9 at offset 65"),
    ("vcb sample --config " + str(VQS) + " model.name={d}/policy output_dir={d}/v data.path={d}/bad_qa.jsonl",
     r"QA data .*bad_qa\.jsonl is not UTF-8 text \(byte 0xe9"),
    ("vcb sample --config {d}/bad.yaml", r"recipe .*bad\.yaml is not UTF-8"),
    ("qa-feedback prepare --prompts {d}/bad.jsonl --out {d}/q.jsonl --tokenizer {d}/policy",
     r"QA-Feedback prompt file .*bad\.jsonl is not UTF-8 text \(byte 0xe9 at offset 26"),
    # numbers checked at the door
    ("generate " + POLICY + " --out {d}/g.jsonl --max-new-tokens 0", r"--max-new-tokens must be at least 1, got 0"),
    ("generate " + POLICY + " --out {d}/g.jsonl --sample --num-samples 0", r"--num-samples must be at least 1"),
    ("generate " + POLICY + " --out {d}/g.jsonl --batch-size 0", r"--batch-size must be at least 1, got 0"),
    ("generate " + POLICY + " --out {d}/g.jsonl --sample --temperature -1", r"--temperature must be above 0, got -1"),
    ("generate " + POLICY + " --out {d}/g.jsonl --max-prompts -1", r"--max-prompts must be at least 1, got -1"),
    ("generate " + POLICY + " --out {d}/g.jsonl --sample --top-p 2", r"--top-p must be above 0 and at most 1, got 2"),
    ("generate " + POLICY + " --out {d}/g.jsonl --top-k -3", r"--top-k must be at least 0, got -3"),
    ("score {d}/good.jsonl --rewards {d}/rewards.yaml --out {d}/s.jsonl --batch-size 0",
     r"--batch-size must be at least 1, got 0"),
    # score: nothing to score, nothing overwritten
    ("score {d}/empty.jsonl --rewards {d}/rewards.yaml --out {d}/s.jsonl", r"empty\.jsonl holds no records"),
    ("score {d}/good.jsonl --rewards {d}/rewards.yaml --out {d}/exists.jsonl",
     r"exists\.jsonl exists; pass --overwrite to replace it"),
    # checkpoints, ports, paths
    (TRAIN + " --resume {d}/no_such_checkpoint", r"checkpoint .*no_such_checkpoint not found"),
    (TRAIN + " --resume {d}/old_checkpoint", r"checkpoint .*old_checkpoint is damaged \(trainer_state\.json"),
    ("serve-reward --config {d}/rewards.yaml --port 99999", r"--port must be between 0 and 65535.*got 99999"),
    ("generate " + POLICY + " --out /proc/alarm-test/g.jsonl", r"cannot use /proc/.*choose another path"),
]


@pytest.mark.parametrize("command, message", BAD_INPUTS, ids=[c.split(" --")[0] + f"-{i}"
                                                            for i, (c, _) in enumerate(BAD_INPUTS)])
def test_a_bad_input_is_one_line_and_exit_code_2(d, capsys, command, message):
    import re

    rc = main(command.format(d=d).split())
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("alarm: error:")]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert (d / "exists.jsonl").read_text() == "already here\n"


def test_nothing_is_sampled_or_written_before_a_missing_resume_checkpoint_is_found(d, capsys, tmp_path):
    out = tmp_path / "run"
    assert main((TRAIN.format(d=d).replace(f"{d}/run", str(out)) + f" --resume {tmp_path}/nope").split()) == 2
    assert not out.exists()


def test_select_checks_greedy_vs_sampled_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """`score` ran in one directory, `select` in another: the greedy-vs-sample order check still reads the
    generation sidecars (the scored sidecar used to keep a path relative to where score ran)."""
    work = tmp_path / "work"
    (work / "gens").mkdir(parents=True)
    rows = [{"prompt_id": str(i), "sample": 0, "prompt": "q", "completion": "x" * (i + 1)} for i in range(6)]
    for name, sampled in (("greedy", False), ("sampled", True)):
        (work / "gens" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (work / "gens" / f"{name}.jsonl.meta.json").write_text(json.dumps(
            {"do_sample": sampled, **({"temperature": 1.0, "top_p": 1.0, "top_k": 0} if sampled else {})}))
    (work / "rewards.yaml").write_text("holistic: {type: length, unit: chars}\naspects:\n  w: {type: length}\n")
    monkeypatch.chdir(work)
    for name in ("greedy", "sampled"):
        assert main(["score", f"gens/{name}.jsonl", "--rewards", "rewards.yaml", "--out-dir", "scored"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    # the files given in the wrong order (sampled first) must be refused, not taken on trust
    rc = main(["select", str(work / "scored" / "sampled.scored.jsonl"), str(work / "scored" / "greedy.scored.jsonl"),
               "--out-dir", "sel"])
    err = capsys.readouterr().err
    assert rc == 2 and "was sampled" in err and "no generation sidecar" not in err
    shutil.rmtree(elsewhere)
