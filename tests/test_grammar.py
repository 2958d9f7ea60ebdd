"""alarm.rewards.grammar: the offline checker, the LanguageTool client against a stand-in server (UTF-16
offsets, retries, timeouts, no silent zero), and token-level grammar rewards through PPO on a tiny T5."""

from __future__ import annotations

import socket
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import pytest
import tiny
import torch
from conftest import LocalServer

from alarm.combine import CombineConfig, RewardSet
from alarm.data.mt import (
    load_pairs,
    prompt_records,
)
from alarm.errors import AlarmError
from alarm.rewards.base import Dense, compute
from alarm.rewards.grammar import GrammarReward, LanguageToolClient, SpellingChecker, utf16_to_index
from alarm.trainers.ppo import PPOConfig, PPOTrainer

DATA = Path(__file__).parent / "data" / "mt_pairs.jsonl"


# ---------------------------------------------------------------- offline checker


def test_offline_checker_finds_misspelling():
    text = "I did not recieve the report, but the Commission's programme is in favour of it."
    found = SpellingChecker().check(text)
    assert [(text[m.start:m.end], m.rule) for m in found] == [("recieve", "SPELLING")]
    # untranslated Spanish is an error too; names (capitalised) and acronyms are skipped
    found = SpellingChecker().check("Mr Barroso and the MEPs said gracias in Galicia.")
    assert [m.start for m in found] == [29]


def test_grammar_reward_reports_checker_and_spans(monkeypatch, caplog):
    monkeypatch.delenv("ALARM_LANGUAGETOOL_URL", raising=False)
    r = GrammarReward(error_value=-1.0, clean_value=0.25)
    assert r.checker.startswith("pyspellchecker")
    with caplog.at_level("WARNING", logger="alarm.rewards.grammar"):
        out = compute(r, ["p", "p", "p"], ["The doog barks.", "All fine here.", "  "])
        counts = list(r.last_error_counts)
        compute(r, ["p"], ["Again fine."])
    assert sum("offline checker pyspellchecker" in m for m in caplog.messages) == 1  # logged once
    assert out[0] == Dense(spans=((4, 8, -1.0),), default=0.25, level="token")
    assert out[1] == Dense(spans=(), default=0.25, level="token")
    assert out[2] is None
    assert counts == [1, 0, 0] and r.last_error_counts == [0]
    with pytest.raises(AlarmError, match="needs a server"):
        GrammarReward(checker="languagetool")
    with pytest.raises(AlarmError, match="clean_value"):
        GrammarReward(error_value=0.0, clean_value=-1.0)


# ---------------------------------------------------------------- LanguageTool client against a stand-in server

TYPOS = {"recieve": "receive", "teh": "the"}


def lt_answer(text: str) -> dict:
    """What a LanguageTool server answers for ``text`` (the real /v2/check shape; offsets in UTF-16 units)."""
    matches = []
    for wrong, right in TYPOS.items():
        start = text.find(wrong)
        if start < 0:
            continue
        off16 = len(text[:start].encode("utf-16-le")) // 2
        matches.append({
            "message": "Possible spelling mistake found.", "shortMessage": "Spelling mistake",
            "replacements": [{"value": right}], "offset": off16, "length": len(wrong),
            "context": {"text": text, "offset": off16, "length": len(wrong)}, "sentence": text,
            "type": {"typeName": "UnknownWord"},
            "rule": {"id": "MORFOLOGIK_RULE_EN_US", "description": "Possible spelling mistake",
                     "issueType": "misspelling", "category": {"id": "TYPOS", "name": "Possible Typo"}},
            "ignoreForIncompleteSentence": False, "contextForSureMatch": 0,
        })
    return {"software": {"name": "LanguageTool", "version": "6.4", "apiVersion": 1, "status": ""},
            "warnings": {"incompleteResults": False},
            "language": {"name": "English (US)", "code": "en-US",
                         "detectedLanguage": {"name": "English (US)", "code": "en-US", "confidence": 0.99}},
            "matches": matches}


@contextmanager
def lt_server(mode="ok", delay=0.0):
    """A LanguageTool stand-in (the shared LocalServer) answering /v2/check with the real JSON shape."""
    requests = []

    def handle(request):
        form = {k: v[0] for k, v in urllib.parse.parse_qs(request["body"].decode()).items()}
        requests.append({"path": request["path"], **form})
        if delay:
            time.sleep(delay)
        if mode in ("500", "400"):
            return int(mode), b"Error: bad language code" if mode == "400" else b"internal error"
        return 200, lt_answer(form["text"])

    server = LocalServer(handle)
    try:
        yield server.url, requests
    finally:
        server.close()


def test_languagetool_matches_map_to_python_indices():
    with lt_server() as (url, requests):
        r = GrammarReward(url=url, error_value=-1.0, clean_value=0.0, concurrency=2)
        texts = ["I did not recieve it.", "Rocket 🚀🚀 then teh end.", "All good.", "I did not recieve it."]
        out = r(["p"] * 4, texts)
    assert r.checker.startswith(f"languagetool ({url}")
    assert len(requests) == 3  # duplicates are checked once
    assert {q["path"] for q in requests} == {"/v2/check"} and {q["language"] for q in requests} == {"en-US"}
    s, e, v = out[0].spans[0]
    assert texts[0][s:e] == "recieve" and v == -1.0
    s, e, _ = out[1].spans[0]
    assert texts[1][s:e] == "teh"  # the emoji count twice in UTF-16; the span is still on "teh"
    assert out[2].spans == () and out[2].default == 0.0
    assert utf16_to_index("a🚀b") == [0, 1, 1, 2, 3]


def test_languagetool_down_is_a_clear_error_after_bounded_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    client = LanguageToolClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01, timeout=1.0)
    t0 = time.perf_counter()
    with pytest.raises(AlarmError, match=r"failed after 3 attempts: cannot connect"):
        client.check("Some text.")
    assert time.perf_counter() - t0 < 5


def test_languagetool_slow_server_times_out_with_bounded_retries():
    with lt_server(delay=1.5) as (url, requests):
        client = LanguageToolClient(url, retries=1, backoff=0.01, timeout=0.3)
        t0 = time.perf_counter()
        with pytest.raises(AlarmError, match=r"failed after 2 attempts: no answer within 0.3 s"):
            client.check("I did not recieve it.")
        elapsed = time.perf_counter() - t0
    assert len(requests) == 2
    assert elapsed < 1.4  # gave up on each attempt at the timeout, did not wait for the server


def test_languagetool_server_errors_retry_5xx_but_not_4xx():
    with lt_server(mode="500") as (url, requests):
        with pytest.raises(AlarmError, match="failed after 3 attempts: HTTP 500"):
            LanguageToolClient(url, retries=2, backoff=0.01).check("x y")
        assert len(requests) == 3
    with lt_server(mode="400") as (url, requests):
        with pytest.raises(AlarmError, match="rejected the request: HTTP 400 Error: bad language code"):
            LanguageToolClient(url, retries=2, backoff=0.01).check("x y")
        assert len(requests) == 1


def test_no_silent_zero_reward_when_server_fails():
    with lt_server(delay=1.0) as (url, _):
        r = GrammarReward(url=url, timeout=0.2, retries=0)
        rs = RewardSet(CombineConfig(mode="aspect_only"), aspects={"grammar": r})
        with pytest.raises(AlarmError, match="LanguageTool server"):
            rs.combine(["p"], ["I did not recieve it."], [[5, 21]])


# ---------------------------------------------------------------- PPO on a tiny T5 with token-level grammar rewards


def test_seq2seq_ppo_step_puts_grammar_rewards_on_the_misspelt_tokens(tmp_path, monkeypatch):
    monkeypatch.delenv("ALARM_LANGUAGETOOL_URL", raising=False)
    tok = tiny.tokenizer()
    grammar = GrammarReward(checker="spelling", error_value=-1.0, clean_value=0.5)
    rs = RewardSet(CombineConfig(mode="aspect_only", shape_aspects=False), aspects={"grammar": grammar})
    records = prompt_records(load_pairs(DATA)[:2], tok, seq2seq=True)
    cfg = PPOConfig(max_new_tokens=16, rollout_batch_size=2, mini_batch_size=1, grad_accum_steps=1, steps=1,
                    learning_rate=1e-3, ppo_epochs=1, seed=0)
    tr = PPOTrainer(cfg, tiny.seq2seq_lm(), tok, rs, records, tmp_path)

    bad = "The quick brown fox jumpz over the lazy dog."
    good = "Paris is the capital of France."
    enc = [tok(t, return_offsets_mapping=True) for t in (bad, good)]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    T = max(len(e["input_ids"]) for e in enc) + 2
    rows = [e["input_ids"] + [eos] + [pad] * (T - len(e["input_ids"]) - 1) for e in enc]
    # Crafted responses, no sampling-pass outputs: make_experience runs the policy forward itself.
    # as the real generate: the sampling pass's outputs too only when asked for them
    monkeypatch.setattr(tr, "generate", lambda batch, with_policy_outputs=False:
                        (torch.tensor(rows), None) if with_policy_outputs else torch.tensor(rows))
    captured = {}
    original = tr.make_experience

    def spy(*a, **k):
        captured["exp"], captured["info"] = original(*a, **k)
        return captured["exp"], captured["info"]

    monkeypatch.setattr(tr, "make_experience", spy)
    before = {n: p.detach().clone() for n, p in tr.unwrapped.named_parameters() if p.requires_grad}
    metrics = tr.step()

    exp, info = captured["exp"], captured["info"]
    assert info["texts"] == [bad, good]
    start = bad.index("jumpz")
    end = start + len("jumpz")
    scores = exp.scores
    for i, e in enumerate(enc):
        n = len(e["input_ids"])
        for t, (s, f) in enumerate(e["offset_mapping"]):
            expected = -1.0 if i == 0 and s < end and f > start else 0.5
            assert float(scores[i, t]) == pytest.approx(expected), (i, t, tok.decode(e["input_ids"][t]))
        assert float(scores[i, n]) == pytest.approx(0.5)  # EOS: generated, covers no character
        assert torch.all(scores[i, n + 1 :] == 0)  # padding gets nothing
    n_err = int((scores[0] == -1.0).sum())
    assert n_err >= 1 and int((scores[1] == -1.0).sum()) == 0
    assert metrics["rewards/grammar/mean"] < 0.5
    after = dict(tr.unwrapped.named_parameters())
    assert any(not torch.equal(before[k], after[k].detach()) for k in before if "lora" in k)
