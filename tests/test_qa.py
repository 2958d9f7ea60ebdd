"""The packaged quickstart QA set, JSONL validation errors, and prompt formatting."""

import json

import pytest
from transformers import AutoTokenizer

from alarm.data.qa import QARecord, format_prompt, load_qa_jsonl, split_records
from alarm.errors import AlarmError
from alarm.models import minilm_path

GOOD = {
    "id": "a",
    "split": "train",
    "question": "What is the capital of France?",
    "passages": ["Paris is the capital of France.", "Lyon is a city in France."],
    "reference": "The capital of France is Paris.",
}


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_packaged_quickstart_is_valid():
    records = load_qa_jsonl()
    assert len(records) >= 60
    assert all(isinstance(r, QARecord) for r in records)
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert 2 <= len(r.passages) <= 4
        assert r.question.strip().endswith("?")
        assert r.reference.strip() and r.reference.strip()[-1] in ".!"
    train, test = split_records(records, "train"), split_records(records, "test")
    assert len(train) >= 40 and len(test) >= 12
    assert len(train) + len(test) == len(records)


def test_load_from_path_and_skip_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [GOOD, "", {**GOOD, "id": "b", "split": "test"}])
    records = load_qa_jsonl(path)
    assert [r.id for r in records] == ["a", "b"]
    assert [r.id for r in split_records(records, "test")] == ["b"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "x", "split": ', "invalid JSON"),
        ({k: v for k, v in GOOD.items() if k != "reference"}, "missing field 'reference'"),
        ({**GOOD, "passages": "one long string"}, "field 'passages' must be a list of 2-4 strings"),
        ({**GOOD, "passages": ["only one"]}, "field 'passages' must be a list of 2-4 strings"),
        ({**GOOD, "passages": ["a", "b", "c", "d", "e"]}, "field 'passages' must be a list of 2-4 strings"),
        ({**GOOD, "question": 42}, "field 'question' must be a non-empty string"),
        ({**GOOD, "reference": "  "}, "field 'reference' must be a non-empty string"),
        ({**GOOD, "split": "dev"}, "field 'split' must be one of"),
        ('["not", "an", "object"]', "each line must be a JSON object"),
        (GOOD, "duplicate id 'a' \\(first on line 1\\)"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "broken.jsonl", [GOOD, {**GOOD, "id": "b"}, bad])
    with pytest.raises(AlarmError, match=rf"broken\.jsonl line 3: {message}"):
        load_qa_jsonl(path)


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(AlarmError, match="cannot read QA data"):
        load_qa_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(AlarmError, match="unknown split 'dev'"):
        split_records(load_qa_jsonl(), "dev")


@pytest.fixture(scope="module")
def plain_tokenizer():
    tok = AutoTokenizer.from_pretrained(minilm_path())
    assert not tok.chat_template
    return tok


def test_format_prompt_without_chat_template(plain_tokenizer):
    text = format_prompt(plain_tokenizer, "Q?", ["first passage.", "second passage."])
    assert "Question: Q?\nPassages:\n[1] first passage.\n[2] second passage.\nAnswer:" in text
    assert text.endswith("Answer:")
    assert "1-3" in text and "passages" in text
    assert format_prompt(plain_tokenizer, "Q?", ["p1", "p2"], system="Be brief.").startswith("Be brief.\n")


def test_format_prompt_with_chat_template(plain_tokenizer):
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    text = format_prompt(tok, "Q?", ["first passage.", "second passage."])
    assert text.startswith("<system>") and "1-3" in text
    assert "<user>Passages:\n[1] first passage.\n[2] second passage.\n\nQuestion: Q?</user>" in text
    assert text.endswith("<assistant>")


def test_format_prompt_folds_system_into_user_when_template_rejects_it():
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    text = format_prompt(tok, "Q?", ["a.", "b."], system="Use the passages.")
    assert text.startswith("<user>Use the passages.\n\nPassages:") and text.endswith("<assistant>")
