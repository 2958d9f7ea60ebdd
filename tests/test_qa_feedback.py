"""QA-Feedback: loaders and their errors, the split by question, span labels, Bradley–Terry training, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alarm.data.qa_feedback import (
    FACTUALITY_ERRORS,
    RELEVANCE_ERRORS,
    Passage,
    PassagePrompt,
    SpanError,
    error_labels,
    fit_passages,
    load_feedback,
    load_prompts,
    policy_records,
    reward_prompt,
    split_questions,
)
from alarm.errors import AlarmError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "qa_feedback"
RECIPES = ROOT / "src" / "alarm" / "recipes"
needs_shared_data = pytest.mark.skipif(not (SHARED / "prompts.json").exists(), reason=f"no QA-Feedback subset at {SHARED}")

ANSWER = "Paris is the capital of France. It has two million people. The moon is made of cheese."


def feedback_record(q="What is the capital of France?", errors=None, preference=None, **over):
    rec = {
        "question": q,
        "passages": [["Paris", "Paris is the capital of France.", "About two million people live there."]],
        "gold": "Paris.",
        "prediction 1": ANSWER,
        "prediction 2": "Paris.",
        "prediction 3": "Paris is the capital of France, with about two million people.",
        "prediction 4": "",
        "feedback": {"errors": errors if errors is not None else [
            {"error type": "Unverifiable", "explanation": "", "start": 59, "end": 86},
            {"error type": "Irrelevant", "explanation": "", "start": 59, "end": 86}],
            "missing-info": [], "corrected-prediction": "Paris is the capital of France."},
        "preference": preference if preference is not None else [2, 2, 1, 0, 1, 1],
    }
    rec.update(over)
    return rec


def write(tmp_path, name, data) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


# ------------------------------------------------------------------------------------------------ loaders


def test_loaders_normalise_both_passage_forms(tmp_path):
    prompts = [{"question": "Q1?", "answer": ["A1."], "text": "question: Q1?",
                "passages": [{"wikipage": "T", "content": "Body one."}, ["T2", "S1.", "S2."]]}]
    recs = load_prompts(write(tmp_path, "p.json", prompts))
    assert recs[0].passages == (Passage("T", "Body one."), Passage("T2", "S1. S2."))
    assert recs[0].answers == ("A1.",)
    fb = load_feedback(write(tmp_path, "f.json", [feedback_record()]))[0]
    assert fb.passages[0] == Passage("Paris", "Paris is the capital of France. About two million people live there.")
    assert fb.errors[0] == SpanError("Unverifiable", 59, 86)
    # preference [2, 2, 1, 0, 1, 1] over pairs 1v2 1v3 1v4 2v3 2v4 3v4; the tie (2v3) is skipped
    assert fb.pairs() == [(1, 0), (2, 0), (0, 3), (1, 3), (2, 3)]


@pytest.mark.parametrize("change, message", [
    ({"preference": [1, 2, 3, 0, 0, 0]}, "record 1 (question 'Second?'): field 'preference'"),
    ({"feedback": {"errors": [{"error type": "Unverifiable", "start": 5, "end": 999}]}},
     "record 1 (question 'Second?'), feedback.errors[0]: bad span"),
    ({"feedback": {"errors": [{"error type": "Made-Up", "start": 0, "end": 3}]}}, "'error type' must be one of"),
    ({"prediction 3": None}, "record 1 (question 'Second?'): field 'prediction 3'"),
])
def test_feedback_errors_name_the_record(tmp_path, change, message):
    bad = feedback_record(q="Second?", **change)
    with pytest.raises(AlarmError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_feedback(write(tmp_path, "f.json", [feedback_record(), bad]))


def test_missing_field_and_bad_source(tmp_path):
    rec = feedback_record()
    del rec["prediction 2"]
    with pytest.raises(AlarmError, match="record 0 .*missing field 'prediction 2'"):
        load_feedback(write(tmp_path, "f.json", [rec]))
    with pytest.raises(AlarmError, match="record 0 .*'passages'"):
        load_prompts(write(tmp_path, "p.json", [{"question": "Q?", "answer": ["A"], "passages": "x"}]))
    with pytest.raises(AlarmError, match="cannot read"):
        load_prompts(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AlarmError, match="not valid JSON"):
        load_prompts(tmp_path / "bad.json")


def test_loader_reads_a_url(tmp_path, http_server):
    path = write(tmp_path, "f.json", [feedback_record()])
    server = http_server(lambda request: (200, Path(path).read_bytes()))  # a file host
    recs = load_feedback(f"{server.url}/f.json")
    assert recs[0].question == "What is the capital of France?"


# ------------------------------------------------------------------------------------------------ split, labels


def test_split_is_by_question_seeded_and_order_free():
    qs = [f"q{i}" for i in range(50)]
    train, val = split_questions(qs + qs, 0.2, seed=1)  # duplicates (several responses) stay together
    assert len(val) == 10 and len(train) == 40 and not train & val
    assert split_questions(list(reversed(qs)), 0.2, seed=1) == (train, val)
    assert split_questions(qs, 0.2, seed=2)[1] != val


def test_error_labels_sentence_and_subsentence():
    errors = [SpanError("Unverifiable", 59, 86), SpanError("Redundant", 0, 5)]
    # sentences: "Paris is the capital of France." / "It has two million people." / "The moon is made of cheese."
    assert error_labels(ANSWER, errors, FACTUALITY_ERRORS, "sentence") == [0, 0, 1]
    assert error_labels(ANSWER, errors, RELEVANCE_ERRORS, "sentence") == [1, 0, 0]
    assert error_labels(ANSWER, [], FACTUALITY_ERRORS, "sentence") == [0, 0, 0]
    # a span touching only the boundary character after a sentence does not mark it
    assert error_labels(ANSWER, [SpanError("Unverifiable", 31, 32)], FACTUALITY_ERRORS, "sentence")[0] == 0


def test_span_examples_put_labels_on_separators(minilm_tokenizer):
    from alarm.reward_models.train import span_examples

    rec = load_feedback_from([feedback_record()])[0]
    ex = span_examples([rec], minilm_tokenizer, "factuality", max_length=128)[0]
    labelled = [(i, y) for i, y in enumerate(ex["labels"]) if y != -100]
    assert [y for _, y in labelled] == [0, 0, 1]
    assert all(ex["input_ids"][i] == minilm_tokenizer.sep_token_id for i, _ in labelled)
    rel = span_examples([rec], minilm_tokenizer, "relevance", max_length=128)[0]
    assert [y for y in rel["labels"] if y != -100].count(1) == 1


def load_feedback_from(records, tmp=None):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return load_feedback(write(Path(d), "f.json", records))


# ------------------------------------------------------------------------------------------------ policy prompts


def test_policy_records_fit_the_token_budget():
    from tiny import tokenizer

    tok = tokenizer()
    recs = load_feedback_from([feedback_record(passages=[["T", "word " * 400], ["U", "other " * 300]])])
    out = policy_records(recs, tok, max_prompt_tokens=200)[0]
    assert set(out) == {"id", "prompt", "question", "passages", "reference"}
    assert len(tok(out["prompt"], add_special_tokens=False)["input_ids"]) <= 200
    assert out["question"] in out["prompt"] and out["passages"][0].endswith("…")
    with pytest.raises(AlarmError, match="max_prompt_tokens"):
        fit_passages(tok, "q " * 300, ["x " * 50], 40)


def test_passage_prompt_wrapper_builds_the_reward_input():
    seen = {}

    def reward(prompts, completions, **cols):
        seen["prompts"] = prompts
        return [1.0] * len(prompts)

    reward.name = "holistic"
    wrapped = PassagePrompt(reward)
    assert wrapped(["Q?"], ["A."], passages=[["p one", "p two"]]) == [1.0]
    assert seen["prompts"] == [reward_prompt("Q?", ["p one", "p two"])] == ["question: Q? context: text: p one | text: p two"]
    with pytest.raises(AlarmError, match="passages"):
        wrapped(["Q?"], ["A."])


# ------------------------------------------------------------------------------------------------ the paper's inputs


HAMLET = [("Hamlet", "Hamlet is a tragedy by William Shakespeare."),
          ("William Shakespeare", "William Shakespeare was an English playwright and poet."),
          ("Globe Theatre", "The Globe Theatre was a theatre in London."),
          ("Elsinore", "Kronborg castle in Elsinore is the setting of Hamlet."),
          ("Ophelia", "Ophelia is a character in Hamlet.")]
HAMLET_TEXT = ("question: Who wrote Hamlet? context: wikipage: Hamlet text: Hamlet is a tragedy by William "
               "Shakespeare. | wikipage: William Shakespeare text: William Shakespeare was an English playwright and "
               "poet. | wikipage: Globe Theatre text: The Globe Theatre was a theatre in London. | wikipage: Elsinore "
               "text: Kronborg castle in Elsinore is the setting of Hamlet. | wikipage: Ophelia text: Ophelia is a "
               "character in Hamlet.")


def hamlet_file(tmp_path, name="prompts.json") -> Path:
    rec = {"question": "Who wrote Hamlet?", "answer": ["William Shakespeare wrote Hamlet."],
           "passages": [{"wikipage": t, "content": c} for t, c in HAMLET], "text": HAMLET_TEXT}
    return write(tmp_path, name, [rec])


def test_paper_records_feed_the_sft_format_with_every_passage(tmp_path):
    """FineGrainedRLHF's T5 read its prompt files' `text`: no chat template, no instruction, all the passages."""
    from tiny import tokenizer

    from alarm.data.qa_feedback import paper_records

    recs = load_prompts(hamlet_file(tmp_path))
    (out,) = paper_records(recs, tokenizer(), seq2seq=True)
    assert out["prompt"] == HAMLET_TEXT  # all five passages, not four
    assert out["question"] == "Who wrote Hamlet?" and out["reference"] == "William Shakespeare wrote Hamlet."
    assert out["passages"] == [{"wikipage": t, "content": c} for t, c in HAMLET]
    assert reward_prompt(out["question"], out["passages"]) == out["prompt"]
    # a budget cuts the end (the last passages), between words; the passages column holds what was read
    tok = tokenizer()
    (cut,) = paper_records(recs, tok, seq2seq=True, max_prompt_tokens=200)
    n = len(tok(cut["prompt"])["input_ids"])
    assert n <= 200 and HAMLET_TEXT.startswith(cut["prompt"]) and len(cut["prompt"]) < len(HAMLET_TEXT)
    rest = HAMLET_TEXT[len(cut["prompt"]):]
    assert rest[0] == " " and len(tok(cut["prompt"] + " " + rest.split()[0])["input_ids"]) > 200
    assert [p["wikipage"] for p in cut["passages"]] == ["Hamlet", "William Shakespeare", "Globe Theatre"]
    assert HAMLET[2][1].startswith(cut["passages"][2]["content"]) and cut["passages"][2]["content"] != HAMLET[2][1]
    assert reward_prompt(cut["question"], cut["passages"]) == cut["prompt"]
    assert "1-3" not in out["prompt"] and "Answer" not in out["prompt"]
    # a chat/causal policy keeps its instruction but also reads every passage
    (causal,) = paper_records(recs, tok, seq2seq=False, max_prompt_tokens=4096)
    assert all(c in causal["prompt"] for _, c in HAMLET) and "[5] Ophelia is a character in Hamlet." in causal["prompt"]


@needs_shared_data
def test_shared_prompt_files_text_is_the_paper_input():
    from tiny import tokenizer

    from alarm.data.qa_feedback import paper_records

    raw = json.loads((SHARED / "prompts.json").read_text())[:20]
    recs = load_prompts(SHARED / "prompts.json")[:20]
    full = paper_records(recs, tokenizer(), seq2seq=True, max_prompt_tokens=100_000)
    assert [r["prompt"] for r in full] == [x["text"] for x in raw]
    cut = paper_records(recs, tokenizer(), seq2seq=True)  # FineGrainedRLHF's 1024 tokens
    assert all(x["text"].startswith(r["prompt"]) for r, x in zip(cut, raw))
    assert all(len(tokenizer()(r["prompt"])["input_ids"]) <= 1024 for r in cut)


def test_paper_recipe_feeds_the_policy_and_the_holistic_model_the_papers_strings(tmp_path, monkeypatch,
                                                                               minilm_tokenizer):
    import tiny

    from alarm.config import build_reward_set, load_recipe
    from alarm.data.prompts import prompt_records
    from alarm.rewards import hf_models

    holistic_model = tiny.tiny_bert("holistic", minilm_tokenizer).eval()

    def fake_load(auto_cls, path, trust_remote_code, device, dtype):
        kind = "holistic" if path == "openbmb/UltraRM-13b" else "factuality" if "completeness" not in path else "c"
        model = holistic_model if kind == "holistic" else tiny.tiny_bert(kind, minilm_tokenizer).eval()
        return model, minilm_tokenizer

    monkeypatch.setattr(hf_models, "_load", fake_load)
    hamlet_file(tmp_path, "train.json")  # one file per split, as FineGrainedRLHF ships them
    recipe = load_recipe(RECIPES / "qa_feedback_paper.yaml", [f"data.path={tmp_path}/{{split}}.json"])
    (train,) = prompt_records(recipe.data, tiny.tokenizer(), "train", seq2seq=True)
    assert train["prompt"] == HAMLET_TEXT
    rs = build_reward_set(recipe)
    answer = "William Shakespeare wrote it."
    (score,) = rs.holistic([train["question"]], [answer], passages=[train["passages"]])
    enc = minilm_tokenizer(f"Human: {HAMLET_TEXT}\nAssistant: {answer}", return_tensors="pt")
    with torch.no_grad():
        assert score == pytest.approx(holistic_model(**enc).logits[0, 0].item(), abs=1e-5)


# ------------------------------------------------------------------------------------------------ recipes


def test_recipes_validate():
    from alarm.config import load_recipe

    r = load_recipe(RECIPES / "qa_feedback.yaml")
    assert r.rewards.holistic["type"] == "evidence_model"
    assert {v["type"] for k, v in r.rewards.aspects.items() if k != "completeness"} == {"evidence_model"}
    assert (r.data.task, r.data.split_seed) == ("qa_feedback", 42)  # the split the reward models were trained on
    paper = load_recipe(RECIPES / "qa_feedback_paper.yaml")
    assert paper.model.name == "t5-large" and paper.rewards.holistic["path"] == "openbmb/UltraRM-13b"
    assert (paper.combine["holistic_weight"], paper.combine["epsilon"]) == (5.0, 0.6)
    p = paper.ppo
    assert (p.learning_rate, p.rollout_batch_size, p.mini_batch_size, p.grad_accum_steps, p.max_new_tokens) == \
        (2e-4, 8, 4, 2, 200)


def test_paper_recipe_builds_its_reward_set_and_policy_with_tiny_stand_ins(monkeypatch, minilm_tokenizer):
    import tiny
    import transformers

    from alarm import models
    from alarm.config import build_reward_set, load_recipe
    from alarm.models import load_policy
    from alarm.rewards import hf_models

    loaded = []

    def fake_load(auto_cls, path, trust_remote_code, device, dtype):
        loaded.append((auto_cls.__name__, path, device))
        kind = "factuality" if auto_cls is transformers.AutoModelForTokenClassification else "holistic"
        return tiny.tiny_bert(kind, minilm_tokenizer).eval(), minilm_tokenizer

    monkeypatch.setattr(hf_models, "_load", fake_load)
    recipe = load_recipe(RECIPES / "qa_feedback_paper.yaml")
    rs = build_reward_set(recipe)
    assert ("AutoModelForSequenceClassification", "openbmb/UltraRM-13b", "cuda") in loaded
    assert {p for _, p, _ in loaded} >= {"runs/rm_paper/factuality", "runs/rm_paper/relevance"}
    assert rs.config.mode == "hierarchical" and set(rs.aspects) == {"factuality", "relevance", "completeness"}
    assert rs.holistic.reward.template.startswith("Human: {prompt}")  # reads question + passages
    assert rs.aspects["relevance"].reward.level == "subsentence" and rs.aspects["factuality"].reward.value == 0.5
    # the reward set scores a batch end to end (tiny random models, so only shapes and types are checked)
    raw = rs.raw_scores(["Q?", "Q2?"], ["An answer. Two sentences.", "Another one."],
                        passages=[["A passage."], ["Another passage."]])
    assert len(raw["holistic"]) == 2 and len(raw["factuality"][0].points) == 2

    # the T5 policy: config says encoder-decoder, so the seq2seq loader is used
    t5 = tiny.seq2seq_lm()
    monkeypatch.setattr(models, "resolve_model_path", lambda name: name)
    monkeypatch.setattr(models, "load_tokenizer", lambda path, **k: tiny.tokenizer())
    monkeypatch.setattr(models, "load_seq2seq_lm", lambda path, **k: t5)
    monkeypatch.setattr(models, "load_causal_lm", lambda path, **k: pytest.fail("loaded T5 as a causal LM"))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: t5.config)
    model, _ = load_policy(recipe.model.name)
    assert model is t5


# ------------------------------------------------------------------------------------------------ shared data


needs_shared = pytest.mark.skipif(not (SHARED / "feedback.json").exists(),
                                  reason=f"QA-Feedback subset not found at {SHARED} (../shared/data/qa_feedback)")


@needs_shared
def test_shared_data_loads_and_splits():
    fb = load_feedback(SHARED / "feedback.json")
    pr = load_prompts(SHARED / "prompts.json")
    assert len(fb) == len(pr) == 400
    assert {r.question for r in fb} == {r.question for r in pr}
    train, val = split_questions([r.question for r in fb])
    assert (len(train), len(val)) == (320, 80)
    assert split_questions([r.question for r in pr]) == (train, val)  # same split from either file
    n_pairs = sum(len(r.pairs()) for r in fb)
    assert 0 < n_pairs < 6 * 400
    labels = [y for r in fb for y in error_labels(r.predictions[0], r.errors, FACTUALITY_ERRORS)]
    assert 0.05 < sum(labels) / len(labels) < 0.5


@needs_shared
def test_shared_policy_records_fit_384_tokens():
    from tiny import tokenizer

    tok = tokenizer()
    recs = policy_records(load_prompts(SHARED / "prompts.json")[:5], tok, max_prompt_tokens=384)
    assert all(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) <= 384 for r in recs)
