"""alarm.reward_models.evidence: reward models that read every passage (frozen MiniLM features + linear models),
and k-fold cross-validation by question (``alarm rm evaluate --config``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_qa_feedback import feedback_record, load_feedback_from
from test_reward_models import grounded_preferences

from alarm.errors import AlarmError

FACTS = ["Paris is the capital of France.", "The Nile flows through Egypt.", "Mount Everest is in Nepal.",
         "Tokyo is the largest city in Japan.", "The Amazon is a river in Brazil.", "Canberra is in Australia.",
         "Rome was the centre of an empire.", "The Danube flows through Vienna.", "Oslo is in Norway.",
         "Lima is the capital of Peru.", "Madrid is the capital of Spain.", "The Thames flows through London."]
INVENTED = ["Bananas taught the orchestra to knit quietly.", "My cat repairs submarines on Tuesdays.",
            "The violin ate seven purple clouds.", "Spoons vote in the winter elections."]


def ungrounded_answers(n=12):
    """prediction 1 = a fact from the passages, then an invented sentence marked Unverifiable."""
    recs = []
    for i in range(n):
        fact, made_up = FACTS[i % len(FACTS)], INVENTED[i % len(INVENTED)]
        answer = f"{fact} {made_up}"
        recs.append(feedback_record(q=f"Tell me about item {i}?", passages=[["Wiki", fact, "It is well known."]],
                                    errors=[{"error type": "Unverifiable", "start": len(fact) + 1, "end": len(answer)}],
                                    **{"prediction 1": answer}))
    return load_feedback_from(recs)


class CountingEncoder:
    def __init__(self, encoder):
        self.encoder, self.texts, self.calls = encoder, 0, 0

    def encode(self, texts, **kw):
        self.texts += len(texts)
        self.calls += 1
        return self.encoder.encode(texts, **kw)

    def get_embedding_dimension(self):
        return self.encoder.get_embedding_dimension()


def test_piece_features_see_what_the_passages_support(minilm):
    from alarm.reward_models.evidence import PIECE_FEATURES, EmbeddingCache, piece_features

    evidence = ["Paris is the capital of France.", "It has about two million people."]
    x = piece_features(EmbeddingCache(minilm), "What is the capital of France?", evidence,
                       ["Paris is the capital of France.", "Spoons vote in 1987 elections.", "Paris is the capital of France."])
    f = {name: x[:, i] for i, name in enumerate(PIECE_FEATURES)}
    assert f["evidence_max_cos"][0] == pytest.approx(1.0, abs=1e-4) and f["evidence_max_cos"][1] < 0.5
    assert f["words_in_passages"][0] == 1.0 and f["words_in_passages"][1] < 0.5
    assert f["numbers_in_passages"][1] == 0.0 and f["numbers"][1] == 1
    assert f["earlier_max_cos"][2] == pytest.approx(1.0, abs=1e-4)  # a repeated sentence: redundancy
    assert f["earlier_max_cos"][0] == 0.0 and f["relative_position"].tolist() == pytest.approx([0, 1 / 3, 2 / 3])


def test_embedding_cache_encodes_each_text_once(minilm):
    from alarm.reward_models.evidence import EmbeddingCache

    enc = CountingEncoder(minilm)
    cache = EmbeddingCache(enc, max_items=3)
    a = cache(["one", "two", "one"])
    assert enc.texts == 2 and a.shape[0] == 3 and np.allclose(a[0], a[2])
    cache(["two", "three", "four"])  # "one" is the least recent: evicted
    cache(["one"])
    assert enc.texts == 2 + 2 + 1


def test_factuality_model_finds_unsupported_sentences_and_is_a_dense_reward(tmp_path):
    from alarm.config import build_reward
    from alarm.reward_models.evaluate import evaluate_reward_model
    from alarm.reward_models.evidence import EvidenceReward
    from alarm.reward_models.train import RMTrainConfig, train_reward_model

    records = ungrounded_answers()
    cfg = RMTrainConfig(kind="factuality", architecture="evidence_features", output_dir=str(tmp_path / "f"))
    train, val = records[:9], records[9:]
    stats = train_reward_model(cfg, split=(train, val))
    assert stats["train_error_rate"] == pytest.approx(0.5)
    assert stats["eval"]["model"]["f1"] == 1.0 and stats["eval"]["baseline_always_error"]["f1"] < 0.7
    reward = build_reward("rewards.aspects.factuality", {"type": "evidence_model", "path": str(tmp_path / "f")},
                          None, "factuality")
    assert isinstance(reward, EvidenceReward) and reward.dense and reward.name == "factuality"
    answer = "Berlin is the capital of Germany. The violin ate seven purple clouds."
    (d,) = reward(["What is Germany's capital?"], [answer], evidence=[[{"title": "B", "text": "Berlin is the capital of Germany."}]])
    assert [v for _, v in d.points] == [0.5, -0.5]
    assert [end for end, _ in d.points] == [answer.index(" The"), len(answer)]
    (empty,) = reward(["q"], [""], evidence=[["Some passage."]])
    assert empty.points == ()
    with pytest.raises(AlarmError, match="evidence"):
        reward(["q"], ["an answer"], passages=[["Only what fit the prompt."]])
    again = evaluate_reward_model(tmp_path / "f", records=val)
    assert again["model"] == stats["eval"]["model"]  # the saved reward gives the numbers training reported


def test_holistic_model_ranks_grounded_answers_over_longer_ones(tmp_path):
    from alarm.config import build_reward
    from alarm.reward_models.evaluate import evaluate_reward_model
    from alarm.reward_models.train import RMTrainConfig, train_reward_model

    records = grounded_preferences(12)
    cfg = RMTrainConfig(kind="holistic", architecture="evidence_features", output_dir=str(tmp_path / "h"))
    stats = train_reward_model(cfg, split=(records[:9], records[9:]))
    assert stats["eval"]["pairwise_accuracy"] == 1.0 and stats["eval"]["baseline_longer_is_better"] == 0.0
    reward = build_reward("rewards.holistic", {"type": "evidence_model", "path": str(tmp_path / "h")}, None, "holistic")
    good, bad = reward(["What is Germany's capital?"] * 2,
                       ["Berlin is the capital of Germany.",
                        "Berlin is the capital of Germany. Spoons vote in the winter elections."],
                       evidence=[["Berlin is the capital of Germany."]] * 2)
    assert not reward.dense and good > bad
    assert evaluate_reward_model(tmp_path / "h", records=records[9:])["pairwise_accuracy"] == 1.0


def test_cross_validation_evaluates_every_question_once_on_a_model_that_never_saw_it(tmp_path):
    from alarm.reward_models.train import RMTrainConfig, cross_validate

    records = ungrounded_answers(15)
    cfg = RMTrainConfig(kind="factuality", architecture="evidence_features", output_dir=str(tmp_path / "cv"))
    summary = cross_validate(cfg, folds=3, records=records)
    folds = summary["per_fold"]
    assert [f["validation_questions"] for f in folds] == [5, 5, 5]
    m = summary["metrics"]
    assert m["error_f1"]["folds"] == [f["model"]["f1"] for f in folds]
    assert m["error_f1"]["mean"] == pytest.approx(np.mean(m["error_f1"]["folds"]))
    assert m["error_f1"]["std"] == pytest.approx(np.std(m["error_f1"]["folds"]))
    assert m["always_error_f1"]["mean"] == pytest.approx(2 * 0.5 / 1.5)
    for k in range(3):  # each fold's model trained on the other folds' questions only
        trained_on = json.loads((tmp_path / "cv" / f"fold-{k}" / "train_stats.json").read_text())["train_questions"]
        assert trained_on == 10
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["metrics"]["error_f1"]["mean"] == m["error_f1"]["mean"]
    with pytest.raises(AlarmError, match="folds must be between 2"):
        cross_validate(cfg, folds=1, records=records)


def test_evidence_model_errors_are_one_line(tmp_path):
    from alarm.reward_models.evidence import EvidenceReward
    from alarm.reward_models.train import RMTrainConfig

    with pytest.raises(AlarmError, match="rm_config.json"):
        EvidenceReward(str(tmp_path))
    (tmp_path / "rm_config.json").write_text(json.dumps({"kind": "factuality", "architecture": "grounding_features"}))
    with pytest.raises(AlarmError, match="not an evidence-features model"):
        EvidenceReward(str(tmp_path))
    (tmp_path / "rm_config.json").write_text(json.dumps({"kind": "factuality", "architecture": "evidence_features",
                                                         "piece_features": ["something_else"]}))
    with pytest.raises(AlarmError, match="retrain"):
        EvidenceReward(str(tmp_path))
    with pytest.raises(ValueError, match="holistic, factuality and relevance"):
        RMTrainConfig(kind="completeness", architecture="evidence_features")


def test_rm_evaluate_takes_a_config_or_a_model(tmp_path, capsys):
    from alarm.cli import main

    assert main(["rm", "evaluate"]) == 2
    assert "give --config rm.yaml" in capsys.readouterr().err
    assert main(["rm", "evaluate", "--model", str(tmp_path), "--folds", "3"]) == 2
    assert "--folds and key=value overrides go with --config" in capsys.readouterr().err


def test_a_policy_record_gives_the_reward_every_passage_not_only_what_fit_the_prompt(tmp_path):
    """The models are trained on whole passages; a sentence supported only past the prompt's cut must still
    count as grounded (before: the reward read the cut `passages` column and judged it unsupported)."""
    import tiny

    from alarm.data.prompts import reward_inputs
    from alarm.data.qa_feedback import Passage, PromptRecord, paper_records
    from alarm.reward_models.evidence import EvidenceReward
    from alarm.reward_models.train import RMTrainConfig, train_reward_model

    records = ungrounded_answers()
    cfg = RMTrainConfig(kind="factuality", architecture="evidence_features", output_dir=str(tmp_path / "f"))
    train_reward_model(cfg, split=(records, []), evaluate=False)
    filler = " ".join(f"Filler sentence number {i} says nothing." for i in range(40))
    fact = "The Rhine flows through Basel."
    rec = PromptRecord("Where does the Rhine flow?", (Passage("Rhine", f"{filler} {fact}"),), ("Basel.",))
    (row,) = paper_records([rec], tiny.tokenizer(), seq2seq=False, max_prompt_tokens=160)
    assert fact not in row["passages"][0]["content"] and fact in row["evidence"][0]["content"]
    prompts, columns = reward_inputs([row])
    answer = f"{fact} {INVENTED[0]}"  # shaped like the training answers: a fact, then an invented sentence
    (d,) = EvidenceReward(str(tmp_path / "f"))(prompts, [answer], **columns)
    assert [v for _, v in d.points] == [0.5, -0.5]
    (cut,) = EvidenceReward(str(tmp_path / "f"), column="passages")(prompts, [answer], **columns)
    assert [v for _, v in cut.points] == [-0.5, -0.5]  # what the reward saw before: the fact had been cut away


def test_a_batch_is_embedded_in_one_encoder_call(tmp_path, minilm):
    """PPO scores a whole rollout at once: one encode call for all its texts, not one per completion."""
    from alarm.reward_models.evidence import EvidenceReward
    from alarm.reward_models.train import RMTrainConfig, train_reward_model

    cfg = RMTrainConfig(kind="factuality", architecture="evidence_features", output_dir=str(tmp_path / "f"))
    train_reward_model(cfg, split=(ungrounded_answers(), []), evaluate=False)
    enc = CountingEncoder(minilm)
    reward = EvidenceReward(str(tmp_path / "f"), encoder=enc)
    answers = [f"{f} {INVENTED[i % 4]}" for i, f in enumerate(FACTS[:6])]
    reward([f"Q{i}?" for i in range(6)], answers, evidence=[[f] for f in FACTS[:6]])
    assert enc.calls == 1
