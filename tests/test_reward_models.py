"""alarm.reward_models: Bradley–Terry training, span and completeness models, freezing, evaluation on
held-out questions (tiny BERT models; the shared QA-Feedback data when present)."""

from __future__ import annotations

import json

import pytest
import tiny
import torch
from test_qa_feedback import RECIPES, feedback_record, load_feedback_from

from alarm.data.qa_feedback import (
    PassagePrompt,
    reward_prompt,
)
from alarm.errors import AlarmError


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
    model = tiny.tiny_bert("holistic", minilm_tokenizer)
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
    train_reward_model(cfg, records=records, model=tiny.tiny_bert("factuality", minilm_tokenizer),
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

    model = tiny.tiny_bert("holistic", minilm_tokenizer)
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


def test_rm_train_checks_max_length_against_the_validation_answers_before_training(tmp_path, minilm_tokenizer):
    """Issue 18 item 8: a validation answer longer than max_length failed the evaluation after training, with a
    hint naming max_new_tokens (not an `rm train` setting); now one line naming max_length, before training."""
    from alarm.data.qa_feedback import split_questions
    from alarm.reward_models.train import RMTrainConfig, train_reward_model

    questions = [f"Q{i}?" for i in range(8)]
    _, val_q = split_questions(questions, 0.25, 42)
    long = " ".join(f"Sentence {k} is here." for k in range(30))
    records = load_feedback_from([feedback_record(q=q, errors=[], **{"prediction 1": long if q in val_q else
                                                                      "Short answer. Fine."}) for q in questions])
    cfg = RMTrainConfig(kind="factuality", epochs=1, batch_size=8, max_length=64, validation_fraction=0.25,
                        output_dir=str(tmp_path / "f"), warmup_ratio=0.0)
    with pytest.raises(AlarmError) as e:
        train_reward_model(cfg, records=records, model=tiny.tiny_bert("factuality", minilm_tokenizer),
                           tokenizer=minilm_tokenizer)
    assert str(e.value) == ("2 of 2 validation answers do not fit max_length=64 tokens, and the evaluation after "
                            "training scores every one; raise max_length")
    assert "max_length" in RMTrainConfig.model_fields and not (tmp_path / "f").exists()  # nothing trained or written
