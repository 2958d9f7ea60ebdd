"""Verdict parsing on replies in the styles real judges write (GPT-style, small chat models, the paper's forced
function call), and the misreadings it must never make: the article "a" is not verdict A."""

from __future__ import annotations

import pytest

from alarm.evaluation.judge import combine_orders, parse_verdict

REPLIES = [
    # the article "a" is not verdict A
    ("My verdict is a tie.", "tie"),
    ("The better response is a bit longer but B is correct.", None),
    ("Verdict: A tie.", "tie"),
    ("It's a tie: both answers cite the passage.", "tie"),
    ("A tie.", "tie"),
    ("This is a difficult one, as both answers have a flaw.", None),
    ("Response A gives a date; Response B gives a place. Neither is better.", None),
    ("A bit of both.", None),
    # the format the prompt asks for
    ("Response A is clearer. [[A]]", "A"),
    ("Final verdict: [[B]]", "B"),
    ("[[ b ]]", "B"),
    ("Both are equally good. [[C]]", "tie"),
    ("Response A is more detailed, but Response B is correct. [[B]]", "B"),
    ("I think [[A]] ... no wait, [[B]]", None),  # conflicting: never pick one
    # small-model styles
    ("[A]", "A"),
    ("The answer is: [C]", "tie"),
    ("**Output (b)**", "B"),
    ("Output (a) is better", "A"),
    ("Output (a) is longer, but Output (b) is better.", "B"),
    ("output (b)", "B"),
    ("(a)", "A"),
    ("**B**", "B"),
    ("A", "A"),
    ("b.", "B"),
    ("Response B.", "B"),
    ("tie", "tie"),
    ("Tie.", "tie"),
    ("A. It answers the question directly.", "A"),
    # the paper's forced function call (AlpacaFarm's print_best_model), as text or as the tool call we render
    ('print_best_model(best_output="Output (a)")', "A"),
    ('print_best_model({"best_output": "Output (b)"})', "B"),
    ('{"name": "print_best_model", "arguments": "{\\"best_output\\": \\"Output (b)\\"}"}', "B"),
    # labels and claims
    ("Verdict: B", "B"),
    ("verdict: b", "B"),
    ("**Verdict:** Response A", "A"),
    ("The answer is B.", "B"),
    ("Winner: Response A, because it cites the passage.", "A"),
    ("The winner is B", "B"),
    ("The better response is Response B because it is grounded.", "B"),
    ("Assistant B is better.", "B"),
    ("B is the better response.", "B"),
    ("A is a better answer than B.", "A"),
    ("Both are fine, but I prefer Response A.", "A"),
    ("A: 6/10. B: 9/10. B wins.", "B"),
    ("Verdict: A\nOutput (b) is worse.", "A"),
    ("Response A is not better than Response B in any way.", None),
    ("Neither A nor B is better.", None),
    ("A is better. B is better.", None),
    # no verdict at all
    ("[Response A] is fine", None),  # an echo of the prompt's section header
    ("Both responses have merits.", None),
    ("Let me think about it.", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize("reply, verdict", REPLIES)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_table_is_large_and_covers_every_verdict():
    assert len(REPLIES) >= 30
    assert {v for _, v in REPLIES} == {"A", "B", "tie", None}


@pytest.mark.parametrize("tie_reply", ["My verdict is a tie.", "Verdict: A tie.", "It's a tie."])
def test_a_tie_in_one_order_and_b_in_the_other_is_not_a_win(tie_reply):
    # X shown as A: the judge ties; X shown as B: the judge prefers B (= X). One order only: a tie overall.
    assert combine_orders(parse_verdict(tie_reply), parse_verdict("[[B]]")) == "tie"
    assert combine_orders(parse_verdict("[[A]]"), parse_verdict(tie_reply)) == "tie"


@pytest.mark.parametrize("article", ["a", "A"])
@pytest.mark.parametrize("frame", ["The better response is {} bit longer.", "My verdict is {} close call.",
                                   "Verdict: {} lot of detail in both."])
def test_an_article_after_a_label_is_never_verdict_a(frame, article):
    assert parse_verdict(frame.format(article)) is None
