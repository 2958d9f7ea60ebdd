"""Machine translation (Spanish→English): data, grammar reward (LanguageTool client + offline checker),
seq2seq PPO with token-level grammar rewards, `alarm sft`, recipes."""

from __future__ import annotations

import argparse
import json
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
    format_mt_prompt,
    load_europarl,
    load_pairs,
    load_splits,
    paper_split,
    prompt_records,
    split_pairs,
)
from alarm.errors import AlarmError
from alarm.rewards.base import Dense, compute
from alarm.rewards.grammar import GrammarReward, LanguageToolClient, SpellingChecker, utf16_to_index
from alarm.trainers.ppo import PPOConfig, PPOTrainer

DATA = Path(__file__).parent / "data" / "mt_pairs.jsonl"
RECIPES = Path(__file__).parents[1] / "src" / "alarm" / "recipes"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run ~10x faster on one thread when several jobs share the 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- data


def test_shipped_pairs_are_valid_varied_and_spelt_correctly():
    pairs = load_pairs(DATA)
    assert len(pairs) >= 40
    assert len({p.source for p in pairs}) == len(pairs)
    lengths = [len(p.target.split()) for p in pairs]
    assert min(lengths) <= 3 and max(lengths) >= 15  # short and long sentences
    assert any("?" in p.target for p in pairs)
    checker = SpellingChecker()
    assert [(p.target, checker.check(p.target)) for p in pairs if checker.check(p.target)] == []


@pytest.mark.parametrize("content, problem", [
    ('{"es": "Hola", "en": "Hello"}\n{"es": "Adiós"}\n', "line 2: missing field 'en'"),
    ('{"es": "Hola", "en": "Hello"}\n\n{"es": "Hola", "en": ""}\n', "line 3: field 'en' must be a non-empty"),
    ('{"es": "Hola", "en": "Hello"}\nnot json\n', "line 2: invalid JSON"),
    ('{"source": "Hola", "target": "Hi", "split": "dev"}\n', "line 1: field 'split' must be one of"),
    ('{"id": 1, "es": "a", "en": "b"}\n{"id": 1, "es": "c", "en": "d"}\n', "line 2: duplicate id '1'"),
    ('["es", "en"]\n', "line 1: each line must be a JSON object"),
    ('{"text": "Hola"}\n', "line 1: no translation pair"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, problem):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(AlarmError) as e:
        load_pairs(path)
    assert str(path) in str(e.value) and problem in str(e.value)


def test_tsv_and_europarl_shaped_jsonl(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("es\ten\nHola\tHello\nGracias\tThank you\n")
    assert [(p.source, p.target) for p in load_pairs(tsv)] == [("Hola", "Hello"), ("Gracias", "Thank you")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("Hola\tHello\nsolo una columna\n")
    with pytest.raises(AlarmError, match=rf"{bad} line 2: expected 2 tab-separated columns"):
        load_pairs(bad)
    europarl = tmp_path / "e.jsonl"
    europarl.write_text('{"translation": {"en": "Hello", "es": "Hola"}}\n')
    assert load_pairs(europarl)[0].source == "Hola"
    with pytest.raises(AlarmError, match="cannot read translation pairs"):
        load_pairs(tmp_path / "missing.jsonl")


def test_pinned_splits_are_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"es": f"e{i}", "en": f"x{i}", "split": s}) + "\n"
                            for i, s in enumerate(["train", "train", "validation", "test"])))
    splits = load_splits(str(path))
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [2, 1, 1]


def fake_europarl(n):
    from datasets import Dataset

    return Dataset.from_dict({"translation": [{"en": f"Sentence number {i}.", "es": f"Frase número {i}."}
                                              for i in range(n)]})


def test_europarl_loader_takes_first_pairs_and_splits_70_30_then_90_10(monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return fake_europarl(1000)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    splits = load_europarl(n_pairs=200)
    assert calls == [("Helsinki-NLP/europarl", "en-es", "train")]
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 126, "validation": 14, "test": 60}  # 200 → 140/60 → 126/14
    used = [int(p.target.split()[-1].rstrip(".")) for v in splits.values() for p in v]
    assert sorted(used) == list(range(200))  # exactly the first 200 pairs, each once
    p = splits["train"][0]
    assert p.source.startswith("Frase") and p.target.startswith("Sentence")
    again = load_europarl(n_pairs=200)  # seed 42: the same split every time
    assert [q.source for q in again["test"]] == [q.source for q in splits["test"]]


def test_paper_split_sizes_on_100k_pairs():
    from datasets import Dataset

    parts = paper_split(Dataset.from_dict({"i": list(range(120_000))}))
    assert {k: len(v) for k, v in parts.items()} == {"train": 63_000, "validation": 7_000, "test": 30_000}
    assert all(max(v[:2000]["i"]) < 100_000 for v in parts.values())  # only the first 100 000 rows


def test_europarl_without_network_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AlarmError, match="cannot load Helsinki-NLP/europarl .*give a parallel JSONL/TSV file"):
        load_splits("europarl")


def test_split_of_shipped_pairs_follows_the_paper():
    splits = split_pairs(load_pairs(DATA))
    n = len(load_pairs(DATA))
    test = -(-n * 3 // 10)  # ceil, as datasets rounds the test part up
    valid = -(-(n - test) // 10)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [n - test - valid, valid, test]


def test_prompt_formats():
    tok = tiny.tokenizer()
    assert format_mt_prompt(tok, "Hola.", seq2seq=True) == "translate Spanish to English: Hola."
    plain = format_mt_prompt(tok, "Hola.", seq2seq=False)
    assert plain.endswith("Hola.\n\nEnglish:") and "into English" in plain

    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert add_generation_prompt and not tokenize
            return f"<user>{messages[0]['content']}</user><assistant>"

    chat = format_mt_prompt(Chat(), "Hola.", seq2seq=False)
    assert chat.startswith("<user>Translate the following Spanish text into English") and chat.endswith("<assistant>")
    rec = prompt_records(load_pairs(DATA)[:1], tok, seq2seq=True)[0]
    assert set(rec) == {"id", "prompt", "question", "source", "reference"} and rec["id"] == "mt-001"
    assert rec["reference"] == "The cat is sleeping on the sofa."


def test_seq2seq_records_show_the_holistic_model_the_policy_input(grammar_type, monkeypatch, minilm_tokenizer):
    """The paper's UltraRM read the whole policy input as its instruction: "translate Spanish to English: …"."""
    from transformers import BertConfig, BertForSequenceClassification

    from alarm.config import build_reward_set, load_recipe
    from alarm.rewards import hf_models

    tok = tiny.tokenizer()
    (rec,) = prompt_records(load_pairs(DATA)[:1], tok, seq2seq=True)
    assert rec["prompt"] == rec["question"] == "translate Spanish to English: El gato duerme en el sofá."
    (chat,) = prompt_records(load_pairs(DATA)[:1], tok, seq2seq=False)
    assert chat["question"] == ("Translate the following Spanish text into English. Reply with the translation "
                                "only.\n\nEl gato duerme en el sofá.")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=1)).eval()
    monkeypatch.setattr(hf_models, "_load", lambda *a: (model, minilm_tokenizer))
    holistic = build_reward_set(load_recipe(RECIPES / "mt_paper.yaml")).holistic
    answer = "The cat is sleeping on the sofa."
    assert holistic.render(rec["question"], answer) == (
        "Human: translate Spanish to English: El gato duerme en el sofá.\nAssistant: The cat is sleeping on the sofa.")
    with torch.no_grad():
        expected = model(**minilm_tokenizer(holistic.render(rec["question"], answer), return_tensors="pt")).logits
    assert holistic([rec["question"]], [answer]) == pytest.approx([expected[0, 0].item()], abs=1e-5)


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
    monkeypatch.setattr(tr, "generate", lambda batch, with_policy_outputs=False: (torch.tensor(rows), None))
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
    scores = exp["scores"]
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


# ---------------------------------------------------------------- SFT


def test_alarm_sft_lowers_validation_loss_and_scores_with_sacrebleu(tmp_path):
    import sacrebleu

    from alarm.recipes import sft

    model_dir = tmp_path / "tiny-t5"
    tiny.seq2seq_lm().save_pretrained(model_dir)
    tiny.tokenizer().save_pretrained(model_dir)
    parser = argparse.ArgumentParser()
    sft.add_commands(parser.add_subparsers())
    out = tmp_path / "sft"
    args = parser.parse_args(["sft", f"model={model_dir}", f"data={DATA}", f"output_dir={out}", "epochs=3",
                              "learning_rate=5e-3", "batch_size=8", "max_new_tokens=16", "progress=false", "bleu_before=true",
                              "logging_steps=50"])
    assert args.handler(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["seq2seq"] is True and m["eval_split"] == "validation"
    assert m["eval_loss_after"] < m["eval_loss_before"] - 0.3
    assert isinstance(m["bleu"], float) and 0.0 <= m["bleu"] <= 100.0
    assert 0.0 <= m["bleu_before"] <= 100.0 and 0.0 <= m["chrf_before"] <= 100.0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == m["eval_pairs"] > 0
    hyps, refs = [p["hypothesis"] for p in preds], [p["reference"] for p in preds]
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert (out / "final" / "model.safetensors").exists() and (out / "config.yaml").exists()
    assert sacrebleu.corpus_bleu(refs, [refs]).score == pytest.approx(100.0)  # the scorer is the real one


def test_sft_causal_labels_cover_only_the_translation():
    from alarm.trainers.sft import SFTConfig, encode_pair

    tok = tiny.tokenizer()
    ex = encode_pair(tok, "Hola.", "Hello.", seq2seq=False, config=SFTConfig())
    n_prompt = sum(1 for x in ex["labels"] if x == -100)
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tok.decode(ex["labels"][n_prompt:], skip_special_tokens=True) == "Hello."
    assert ex["labels"][-1] == tok.eos_token_id
    s2s = encode_pair(tok, "Hola.", "Hello.", seq2seq=True, config=SFTConfig())
    assert tok.decode(s2s["input_ids"]) == "translate Spanish to English: Hola."
    assert s2s["labels"][-1] == tok.eos_token_id


def test_sft_config_rejects_unknown_settings(tmp_path):
    from alarm.trainers.sft import load_sft_config

    with pytest.raises(AlarmError, match="learnig_rate: unknown setting"):
        load_sft_config(None, ["learnig_rate=1e-4"])
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text("epochs: 2\ndata: pairs.tsv\n")
    cfg = load_sft_config(str(cfg_file), ["epochs=1"])
    assert cfg.epochs == 1 and cfg.data == "pairs.tsv"
    with pytest.raises(AlarmError, match="batch_size"):
        load_sft_config(None, ["batch_size=0"])


# ---------------------------------------------------------------- recipes


@pytest.fixture
def grammar_type(monkeypatch):
    """Register the grammar reward type if the config module does not know it yet."""
    import alarm.config as config

    classes = config._reward_classes()
    if "grammar" not in classes:
        monkeypatch.setattr(config, "_reward_classes", lambda: {**classes, "grammar": GrammarReward})


def test_recipes_validate_with_the_papers_settings(grammar_type):
    from alarm.config import load_recipe

    small = load_recipe(RECIPES / "mt.yaml")
    paper = load_recipe(RECIPES / "mt_paper.yaml")
    for r in (small, paper):
        c = r.combine_config()
        assert (c.mode, c.holistic_weight, c.epsilon) == ("hierarchical", 3.0, 0.5)
        assert set(r.rewards.aspects) == {"grammar", "readability", "language_confidence"}
        assert "readability" in r.rewards.normalize
        assert r.rewards.aspects["language_confidence"]["languages"] == ["english", "spanish"]
    p = paper.ppo
    assert (p.rollout_batch_size, p.mini_batch_size, p.learning_rate, p.max_new_tokens) == (32, 16, 5e-4, 128)
    assert paper.rewards.holistic["type"] == "sequence_classifier" and "UltraRM" in paper.rewards.holistic["path"]
    assert paper.rewards.aspects["grammar"]["url"].startswith("http")
    assert small.rewards.holistic["type"] == "reference_similarity"
    assert small.rewards.aspects["readability"]["direction"] == "easier"
    assert (RECIPES.parents[2] / small.data.path).exists()


def test_small_recipe_builds_its_rewards_offline(grammar_type, minilm, monkeypatch):
    from alarm.config import build_reward_set, load_recipe

    monkeypatch.delenv("ALARM_LANGUAGETOOL_URL", raising=False)
    rs = build_reward_set(load_recipe(RECIPES / "mt.yaml"))
    assert rs.aspects["grammar"].checker.startswith("pyspellchecker")
    refs = ["The cat is sleeping on the sofa.", "Where is the train station?"]
    hyps = ["The cat is sleping on the sofa.", "¿Dónde está la estación de tren?"]
    raw = rs.raw_scores(["p", "p"], hyps, reference=refs)
    s = hyps[0].index("sleping")
    assert raw["grammar"][0].spans == ((s, s + 7, -1.0),)
    assert raw["language_confidence"][0] > 0.5 > raw["language_confidence"][1]
    assert raw["holistic"][0] > raw["holistic"][1]

