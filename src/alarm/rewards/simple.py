"""Sequence-level rewards that need no model: length, readability, language confidence.

They run offline on CPU and are the MT task's aspect rewards (readability, language confidence) and the
length-only control reward of docs/method.md §2.2.
"""

from __future__ import annotations

import math

from alarm.errors import AlarmError
from alarm.rewards.base import check_batch
from alarm.text import sentence_spans


class LengthReward:
    """Length of each completion in words, characters or sentences.

    The control for length bias: if a mode's gains track this reward, they may be length, not quality.
    """

    higher_is_better = True
    dense = False

    def __init__(self, unit: str = "words", name: str = "length"):
        if unit not in ("words", "chars", "sentences"):
            raise AlarmError(f"LengthReward: unknown unit {unit!r}; use 'words', 'chars' or 'sentences'")
        self.unit = unit
        self.name = name

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        check_batch(self.name, prompts, completions)
        if self.unit == "words":
            return [float(len(c.split())) for c in completions]
        if self.unit == "chars":
            return [float(len(c)) for c in completions]
        return [float(len(sentence_spans(c))) for c in completions]


class ReadabilityReward:
    """Flesch–Kincaid grade level (textstat), signed so the chosen direction scores higher.

    ``direction="easier"`` (default) returns −grade: simpler text gets a higher reward, which is what a
    readability *reward* should prefer. ``direction="harder"`` returns +grade, the sign the ALaRM paper used.
    An empty or whitespace-only completion has no grade and gets ``None`` (does not apply).
    """

    higher_is_better = True  # the sign already encodes the direction
    dense = False

    def __init__(self, direction: str = "easier", name: str = "readability"):
        if direction not in ("easier", "harder"):
            raise AlarmError(f"ReadabilityReward: unknown direction {direction!r}; use 'easier' or 'harder'")
        self.direction = direction
        self.name = name

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        import textstat

        check_batch(self.name, prompts, completions)
        sign = -1.0 if self.direction == "easier" else 1.0
        out: list[float | None] = []
        for c in completions:
            if not c.strip():
                out.append(None)
                continue
            grade = float(textstat.flesch_kincaid_grade(c))
            out.append(sign * grade if math.isfinite(grade) else None)
        return out


def _lingua_language(name: str):
    from lingua import Language

    valid = sorted(lang.name.lower() for lang in Language.all())
    key = str(name).strip().upper()
    if key.lower() not in valid:
        raise AlarmError(f"unknown language {name!r} for lingua; valid names: {', '.join(valid)}")
    return getattr(Language, key)


class LanguageConfidenceReward:
    """Lingua's confidence in [0, 1] that the completion is written in ``target``.

    Lingua compares only the ``languages`` given (fewer candidates: faster and sharper), so include every
    language a confused policy might write in (for es→en MT: at least English and Spanish).
    An empty or whitespace-only completion gets ``None`` (no language to detect).
    """

    higher_is_better = True
    dense = False

    def __init__(self, target: str = "english", languages=("english", "spanish"),
                 name: str = "language_confidence"):
        if isinstance(languages, str):
            languages = (languages,)
        self.languages = [_lingua_language(x) for x in languages]
        self.target = _lingua_language(target)
        if self.target not in self.languages:
            self.languages.append(self.target)
        if len(self.languages) < 2:
            raise AlarmError("LanguageConfidenceReward needs at least two languages to compare; add one to `languages`")
        self.name = name
        self._detector = None

    def detector(self):
        """Built on first use (loading the language models takes a moment) and reused after."""
        if self._detector is None:
            from lingua import LanguageDetectorBuilder

            self._detector = LanguageDetectorBuilder.from_languages(*self.languages).build()
        return self._detector

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        check_batch(self.name, prompts, completions)
        keep = [i for i, c in enumerate(completions) if c.strip()]
        out: list[float | None] = [None] * len(completions)
        if keep:
            values = self.detector().compute_language_confidence_in_parallel(
                [completions[i] for i in keep], self.target
            )
            for i, v in zip(keep, values):
                out[i] = float(v)
        return out
