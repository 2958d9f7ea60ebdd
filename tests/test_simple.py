"""alarm.rewards.simple: length, readability (textstat, offline), language confidence (lingua)."""


import pytest

from alarm.errors import AlarmError
from alarm.rewards.simple import LanguageConfidenceReward, LengthReward, ReadabilityReward

SIMPLE = "The cat sat on the mat. It was warm. The cat was glad."
CONVOLUTED = (
    "Notwithstanding considerable epistemological uncertainty, institutional stakeholders systematically "
    "operationalized multidimensional accountability frameworks, thereby precipitating unprecedented "
    "organizational transformations throughout interdependent administrative hierarchies."
)


# ---------------------------------------------------------------- simple


def test_length_units():
    text = "One two three. Four five!"
    assert LengthReward("words")(["p"], [text]) == [5.0]
    assert LengthReward("chars")(["p"], [text]) == [float(len(text))]
    assert LengthReward("sentences")(["p", "p"], [text, ""]) == [2.0, 0.0]
    with pytest.raises(AlarmError, match="unknown unit 'tokens'"):
        LengthReward("tokens")


def test_readability_direction():
    easier = ReadabilityReward()(["p", "p", "p"], [SIMPLE, CONVOLUTED, "  "])
    assert easier[0] > easier[1]
    assert easier[2] is None
    harder = ReadabilityReward("harder")(["p", "p"], [SIMPLE, CONVOLUTED])
    assert harder == [-easier[0], -easier[1]]
    assert harder[1] > harder[0]
    with pytest.raises(AlarmError, match="'easier' or 'harder'"):
        ReadabilityReward("simpler")


def test_language_confidence():
    reward = LanguageConfidenceReward()
    english = "The weather is lovely today, so we are going for a walk in the park."
    spanish = "El tiempo es estupendo hoy, así que vamos a dar un paseo por el parque."
    en, es, empty = reward(["p"] * 3, [english, spanish, ""])
    assert en > 0.5 > es
    assert 0.0 <= es <= en <= 1.0
    assert empty is None
    assert reward.detector() is reward.detector()  # built once
    spanish_target = LanguageConfidenceReward(target="spanish")(["p", "p"], [english, spanish])
    assert spanish_target[1] > 0.5 > spanish_target[0]


def test_language_names_are_checked():
    with pytest.raises(AlarmError, match="unknown language 'klingon'.*english"):
        LanguageConfidenceReward(languages=("english", "klingon"))
    with pytest.raises(AlarmError, match="at least two languages"):
        LanguageConfidenceReward(target="english", languages=("english",))
