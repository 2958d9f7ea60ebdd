"""Sentence and sub-sentence boundaries with character spans (pysbd does the sentence splitting)."""

from __future__ import annotations

import functools
import re

import pysbd


@functools.lru_cache(maxsize=8)
def _segmenter(language: str) -> pysbd.Segmenter:
    return pysbd.Segmenter(language=language, clean=False, char_span=True)


def sentence_spans(text: str, language: str = "en") -> list[tuple[int, int]]:
    """Character spans [start, end) of the sentences of `text`, trailing whitespace excluded."""
    spans = []
    for seg in _segmenter(language).segment(text):
        start, end = seg.start, seg.end
        while end > start and text[end - 1].isspace():
            end -= 1
        while start < end and text[start].isspace():
            start += 1
        if end > start:
            spans.append((start, end))
    return spans


# A clause ends at a comma, semicolon or colon followed by whitespace (FineGrainedRLHF's sub-sentences).
_CLAUSE_END = re.compile(r"[,;:](?=\s)")


def subsentence_spans(text: str, language: str = "en") -> list[tuple[int, int]]:
    """Sentences further cut after clause punctuation; each piece keeps its punctuation."""
    spans = []
    for start, end in sentence_spans(text, language):
        piece_start = start
        for m in _CLAUSE_END.finditer(text, start, end):
            cut = m.end()
            if text[piece_start:cut].strip():
                spans.append((piece_start, cut))
            piece_start = cut
            while piece_start < end and text[piece_start].isspace():
                piece_start += 1
        if piece_start < end:
            spans.append((piece_start, end))
    return spans


def split_sentences(text: str, language: str = "en") -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text, language)]
