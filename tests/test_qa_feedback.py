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

    holistic_model = tiny_bert("holistic", minilm_tokenizer).eval()

    def fake_load(auto_cls, path, trust_remote_code, device, dtype):
        kind = "holistic" if path == "openbmb/UltraRM-13b" else "factuality" if "completeness" not in path else "c"
        model = holistic_model if kind == "holistic" else tiny_bert(kind, minilm_tokenizer).eval()
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


# ------------------------------------------------------------------------------------------------ reward-model training


def tiny_bert(kind, tok, seed=0):
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    if kind in ("factuality", "relevance"):
        cfg.num_labels = 2
        return BertForTokenClassification(cfg)
    cfg.num_labels = 1
    return BertForSequenceClassification(cfg)


def test_bradley_terry_loss_value():
    from alarm.reward_models.train import bradley_terry_loss

    s = torch.tensor([2.0, 0.0, 1.0])
    loss = bradley_terry_loss(s, torch.tensor([0, 2]), torch.tensor([1, 1]))
    expected = -(torch.nn.functional.logsigmoid(torch.tensor(2.0)) + torch.nn.functional.logsigmoid(torch.tensor(1.0))) / 2
    assert torch.isclose(loss, expected)


def synthetic_preferences(n=8):
    """Answers containing 'correct' beat the others; length is uninformative (the winner is the shorter one)."""
    recs = []
    for i in range(n):
        good, bad = f"The correct answer is {i}.", f"The wrong answer is certainly {i} and more."
        recs.append(feedback_record(q=f"Question number {i}?", errors=[], **{
            "prediction 1": good, "prediction 2": bad, "prediction 3": good + " Yes.", "prediction 4": bad + " No!"},
            preference=[1, 0, 1, 2, 0, 1]))
    return load_feedback_from(recs)


def test_holistic_training_lowers_loss_and_ranks_pairs(tmp_path, minilm_tokenizer):
    from alarm.reward_models.evaluate import evaluate_holistic
    from alarm.reward_models.train import RMTrainConfig, train_reward_model
    from alarm.rewards.hf_models import SequenceClassifierReward

    records = synthetic_preferences()
    cfg = RMTrainConfig(kind="holistic", epochs=10, learning_rate=1e-2, batch_size=4, max_length=64,
                        validation_fraction=0.25, output_dir=str(tmp_path / "h"), warmup_ratio=0.0)
    model = tiny_bert("holistic", minilm_tokenizer)
    stats = train_reward_model(cfg, records=records, model=model, tokenizer=minilm_tokenizer, evaluate=False)
    hist = stats["loss_history"]
    assert hist[-1] < 0.5 * hist[0]
    reward = SequenceClassifierReward.from_pretrained(str(tmp_path / "h"))
    assert reward.max_length == 64  # the saved tokenizer carries the training length
    result = evaluate_holistic(PassagePrompt(reward), records)  # as load_reward returns it
    assert result["pairwise_accuracy"] == 1.0
    assert result["baseline_longer_is_better"] < 0.5
    assert (tmp_path / "h" / "model.safetensors").exists() and (tmp_path / "h" / "rm_config.json").exists()


def grounded_preferences(n=10):
    """The preferred answer is copied from the passages; the other adds a sentence found nowhere in them and is
    longer, so length alone ranks every pair wrong."""
    topics = ["Paris is the capital of France.", "The Nile flows through Egypt.", "Mount Everest is in Nepal.",
              "Tokyo is the largest city in Japan.", "The Amazon is a river in Brazil.", "Canberra is in Australia.",
              "Rome was the centre of an empire.", "The Danube flows through Vienna.", "Oslo is in Norway.",
              "Lima is the capital of Peru."]
    invented = ["Bananas taught the orchestra to knit quietly.", "My cat repairs submarines on Tuesdays.",
                "The violin ate seven purple clouds.", "Spoons vote in the winter elections."]
    recs = []
    for i in range(n):
        fact = topics[i % len(topics)]
        good = fact
        bad = fact + " " + invented[i % len(invented)]
        recs.append(feedback_record(q=f"Tell me about item {i}?", errors=[], passages=[["Wiki", fact]], **{
            "prediction 1": good, "prediction 2": bad, "prediction 3": good, "prediction 4": bad},
            preference=[1, 0, 1, 2, 0, 1]))
    return load_feedback_from(recs)


def test_grounding_bt_holistic_model_learns_grounding_and_loads_as_a_reward(tmp_path):
    from alarm.config import build_reward
    from alarm.reward_models.evaluate import evaluate_reward_model
    from alarm.reward_models.grounding_bt import FEATURES, GroundingBTReward
    from alarm.reward_models.train import RMTrainConfig, train_reward_model

    records = grounded_preferences()
    cfg = RMTrainConfig(kind="holistic", architecture="grounding_features", validation_fraction=0.2,
                        output_dir=str(tmp_path / "g"))
    stats = train_reward_model(cfg, records=records, evaluate=False)
    assert stats["train_pairwise_accuracy"] == 1.0
    assert stats["weights"]["grounding_min"] > 0  # an unsupported sentence lowers the score
    assert {p.name for p in (tmp_path / "g").iterdir()} >= {"model.safetensors", "rm_config.json", "train_stats.json"}

    reward = build_reward("rewards.holistic", {"type": "grounding_bt", "path": str(tmp_path / "g")}, None, "holistic")
    assert isinstance(reward, GroundingBTReward) and reward.name == "holistic"
    passages = [["Berlin is the capital of Germany."]] * 2
    good, bad = reward(["What is Germany's capital?"] * 2,
                       ["Berlin is the capital of Germany.",
                        "Berlin is the capital of Germany. Spoons vote in the winter elections."], passages=passages)
    assert good > bad
    result = evaluate_reward_model(tmp_path / "g", records=records)
    assert result["pairwise_accuracy"] == 1.0 and result["baseline_longer_is_better"] == 0.0
    assert len(FEATURES) == reward.weight.numel()
    with pytest.raises(AlarmError, match="passages"):
        reward(["q"], ["an answer"])


def test_grounding_bt_errors_are_one_line(tmp_path):
    from alarm.reward_models.grounding_bt import GroundingBTReward
    from alarm.reward_models.train import RMTrainConfig

    with pytest.raises(AlarmError, match="rm_config.json"):
        GroundingBTReward(str(tmp_path))
    (tmp_path / "rm_config.json").write_text(json.dumps({"kind": "holistic"}))
    with pytest.raises(AlarmError, match="sequence_classifier"):
        GroundingBTReward(str(tmp_path))
    with pytest.raises(ValueError, match="holistic only"):
        RMTrainConfig(kind="factuality", architecture="grounding_features")


def test_span_model_trains_and_loads_as_a_reward(tmp_path, minilm_tokenizer):
    from alarm.data.qa_feedback import split_feedback
    from alarm.reward_models.evaluate import evaluate_reward_model
    from alarm.reward_models.train import RMTrainConfig, train_reward_model
    from alarm.rewards.hf_models import SpanRewardModel

    recs = []
    for i in range(8):
        ans = f"Fact number {i} is true. The sky is green {i}."
        recs.append(feedback_record(q=f"Q{i}?", **{"prediction 1": ans}, errors=[
            {"error type": "Wrong-Grounding", "start": ans.index("The sky"), "end": len(ans)}]))
    records = load_feedback_from(recs)
    cfg = RMTrainConfig(kind="factuality", epochs=12, learning_rate=5e-3, batch_size=8, max_length=64,
                        validation_fraction=0.25, output_dir=str(tmp_path / "f"), warmup_ratio=0.0)
    train_reward_model(cfg, records=records, model=tiny_bert("factuality", minilm_tokenizer),
                       tokenizer=minilm_tokenizer, evaluate=False)
    reward = SpanRewardModel.from_pretrained(str(tmp_path / "f"), level="sentence", value=0.5)
    train, _ = split_feedback(records, cfg.validation_fraction, cfg.seed)
    assert len(train) == 6
    d = reward([reward_prompt(r.question, r.passages) for r in train], [r.predictions[0] for r in train])
    assert [[v for _, v in x.points] for x in d] == [[0.5, -0.5]] * 6
    result = evaluate_reward_model(tmp_path / "f", records=train)
    assert result["model"]["f1"] == 1.0 and result["baseline_always_clean"]["f1"] == 0.0


def test_freeze_lower_layers(minilm_tokenizer):
    from alarm.reward_models.train import freeze_lower_layers

    model = tiny_bert("holistic", minilm_tokenizer)
    total = sum(p.numel() for p in model.parameters())
    n = freeze_lower_layers(model, 1)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert "classifier.weight" in trainable and any(".layer.1." in k for k in trainable)
    assert not any(".layer.0." in k or "embeddings" in k for k in trainable)
    assert 0 < n < total


def test_rm_config_rejects_unknown_keys(tmp_path):
    from alarm.recipes.reward_models import load_config

    p = tmp_path / "rm.yaml"
    p.write_text("kind: holistic\nepochz: 2\n")
    with pytest.raises(AlarmError, match="epochz: unknown setting"):
        load_config(p)
    p.write_text("kind: helpfulness\n")
    with pytest.raises(AlarmError, match="kind"):
        load_config(p)
    for k in ("holistic", "factuality", "relevance", "completeness"):
        assert load_config(RECIPES / f"rm_{k}.yaml").kind == k


# ------------------------------------------------------------------------------------------------ recipes


def test_recipes_validate():
    from alarm.config import load_recipe

    r = load_recipe(RECIPES / "qa_feedback.yaml")
    assert r.rewards.holistic["type"] == "grounding_bt"
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
        return tiny_bert(kind, minilm_tokenizer).eval(), minilm_tokenizer

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
