"""alarm.rewards.embedding: reference similarity, grounding and relevance with the packaged MiniLM."""

import math

import pytest

from alarm.errors import AlarmError
from alarm.rewards.base import Dense
from alarm.rewards.embedding import GroundingReward, ReferenceSimilarityReward, RelevanceReward, load_encoder
from alarm.text import subsentence_spans

PASSAGE = "The Eiffel Tower is a wrought-iron tower. It is located in Paris, France. It was completed in 1889."


# ---------------------------------------------------------------- embedding


def test_load_encoder_is_cached(minilm):
    assert load_encoder() is minilm
    assert load_encoder(None, "cpu") is minilm


def test_load_encoder_bad_path(tmp_path):
    with pytest.raises(AlarmError, match="could not load sentence encoder"):
        load_encoder(str(tmp_path))


class CountingEncoder:
    """Wraps an encoder to count ``encode`` calls (every reward must embed a whole batch in one call)."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def encode(self, texts, **kw):
        self.calls += 1
        return self.encoder.encode(texts, **kw)


def test_reference_similarity(minilm):
    enc = CountingEncoder(minilm)
    reward = ReferenceSimilarityReward(enc)
    same, other, best_of, none, empty = reward(
        ["q"] * 5,
        ["Paris is the capital of France.", "I like turtles.", "I like turtles.", "Paris.", ""],
        reference=["Paris is the capital of France.", "The capital is Paris.",
                   ["The capital is Paris.", "Turtles are what I like."], None, "Paris"],
    )
    assert enc.calls == 1
    assert same == pytest.approx(1.0, abs=1e-4)
    assert other < 0.5 < best_of
    assert none is None
    assert isinstance(empty, float) and math.isfinite(empty)


def test_reference_similarity_bad_entry(minilm):
    with pytest.raises(AlarmError, match="column 'reference' entry 0 is int"):
        ReferenceSimilarityReward(minilm)(["q"], ["a"], reference=[3])


def test_grounding_copied_vs_unrelated(minilm):
    enc = CountingEncoder(minilm)
    reward = GroundingReward(enc)
    completion = "The Eiffel Tower is located in Paris. Bananas are rich in potassium."
    qa_feedback_passages = [{"wikipage": "Eiffel Tower", "content": PASSAGE}]
    a, b, empty, no_passages = reward(
        ["q"] * 4, [completion, completion, "", completion],
        passages=[[PASSAGE, "Another passage about nothing."], qa_feedback_passages, PASSAGE, []],
    )
    assert enc.calls == 1
    first_end = completion.index(".") + 1
    assert a == Dense(points=((first_end, 0.5), (len(completion), -0.5)), level="sentence")
    assert b == a
    assert empty == Dense(level="sentence") and empty.points == ()
    assert no_passages is None


def test_grounding_copied_sentence_from_later_passage(minilm):
    completion = "It was completed in 1889."
    (d,) = GroundingReward(minilm, value=0.25)(["q"], [completion], passages=[["Unrelated text.", PASSAGE]])
    assert d.points == ((len(completion), 0.25),)


@pytest.mark.parametrize("kw,match", [({"threshold": math.nan}, "threshold"), ({"threshold": 2.0}, "threshold"),
                                      ({"value": -0.5}, "value"), ({"value": math.inf}, "value")])
def test_embedding_reward_parameters_checked(minilm, kw, match):
    with pytest.raises(AlarmError, match=match):
        GroundingReward(minilm, **kw)
    with pytest.raises(AlarmError, match=match):
        RelevanceReward(minilm, **kw)


def test_relevance_subsentences(minilm):
    enc = CountingEncoder(minilm)
    reward = RelevanceReward(enc)
    completion = "The capital of France is Paris, and my cat likes to sleep on the sofa."
    d, empty = reward(["What is the capital of France?"] * 2, [completion, ""])
    assert enc.calls == 1
    assert d == Dense(points=((completion.index(",") + 1, 0.3), (len(completion), -0.3)), level="subsentence")
    assert empty.points == ()


def test_relevance_counts_a_repeated_question_or_clause_as_irrelevant(minilm):
    """A PPO run on the quickstart learned to answer "In which year did the Berlin Wall fall?" with that question
    four times: each copy scored +0.3 (very close to the question). Repeats now score −0.3, the first new
    clause keeps its +0.3, and ``repeat_threshold: null`` restores the old points."""
    q = "In which year did the Berlin Wall fall?"
    echo = f"{q} {q} {q}"
    answer = "The Berlin Wall fell in 1989. The Berlin Wall fell in 1989."
    d_echo, d_answer = RelevanceReward(minilm)([q, q], [echo, answer])
    assert [v for _, v in d_echo.points] == [-0.3, -0.3, -0.3]
    assert d_answer.points == tuple(zip([e for _, e in subsentence_spans(answer)], (0.3, -0.3)))
    old_echo, old_answer = RelevanceReward(minilm, repeat_threshold=None)([q, q], [echo, answer])
    assert [v for _, v in old_echo.points] == [0.3, 0.3, 0.3] and [v for _, v in old_answer.points] == [0.3, 0.3]
    with pytest.raises(AlarmError, match="repeat_threshold"):
        RelevanceReward(minilm, repeat_threshold=2)


def test_relevance_question_column(minilm):
    reward = RelevanceReward(minilm, column="question")
    completion = "The capital of France is Paris."
    (d,) = reward(["question: ... context: a very long prompt about cats"], [completion],
                  question=["What is the capital of France?"])
    assert d.points == ((len(completion), 0.3),)
    with pytest.raises(AlarmError, match="needs the column 'question'"):
        reward(["q"], [completion])
    with pytest.raises(AlarmError, match="column 'question' entry 0 is list"):
        reward(["q"], [completion], question=[["a"]])
