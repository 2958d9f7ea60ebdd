"""alarm.data.mt: parallel pairs, Europarl's split, the prompt a translation policy sees; the MT recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch

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
from alarm.rewards.grammar import GrammarReward, SpellingChecker

DATA = Path(__file__).parent / "data" / "mt_pairs.jsonl"
RECIPES = Path(__file__).parents[1] / "src" / "alarm" / "recipes"


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

