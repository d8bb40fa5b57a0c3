"""Keyword coverage: reward text that mentions required words and penalise forbidden ones."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shared_core.errors import ConfigError
from shared_core.rewards.base import Reward

if TYPE_CHECKING:
    from shared_core.specs import KeywordsSpec

_WORD_RE = re.compile(r"[^\W_]+")
_VOWELS = frozenset("aeiou")
# Doubled final consonants that are part of the base word ("fall", "kiss", "buzz"), not of the inflection.
_KEEP_DOUBLE = frozenset("lsz")


def _tokens(text: str) -> list[str]:
    """Lower-cased words of ``text``: runs of letters and digits (apostrophes and hyphens split words)."""
    return _WORD_RE.findall(text.lower())


def _undouble(stem: str) -> str | None:
    """``"chopp"`` -> ``"chop"``: the stem without a doubled final consonant, if it has one."""
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in _VOWELS and stem[-1] not in _KEEP_DOUBLE:
        return stem[:-1]
    return None


def base_forms(word: str) -> frozenset[str]:
    """Candidate base forms of one lower-cased word, by suffix stripping.

    Covers the regular English inflections: plural/3rd person ``-s``/``-es``, ``-ed``, ``-ing``, ``-er``,
    consonant doubling (chopped, running), ``y`` -> ``ies``/``ied``/``ier``, and a dropped final ``e``
    (making, baked). Two words match when their sets of base forms intersect. Irregular forms
    (ran/run, went/go) are not covered. Stems shorter than two letters are never produced, so
    short words ("is", "bed", "sing") do not collapse onto unrelated ones.

    Example: ``base_forms("chopping") >= {"chop"}`` and ``base_forms("chops") >= {"chop"}``.
    """
    forms = {word}
    n = len(word)

    def add(stem: str) -> None:
        if len(stem) >= 2:
            forms.add(stem)

    if n > 4 and word.endswith(("ies", "ied", "ier")):
        add(word[:-3] + "y")
    if n > 3 and word.endswith("es"):
        add(word[:-2])
    if n > 3 and word.endswith("s") and not word.endswith("ss"):
        add(word[:-1])
    for suffix in ("ed", "er"):
        if n > len(suffix) + 1 and word.endswith(suffix):
            stem = word[: -len(suffix)]
            add(stem)
            add(stem + "e")  # baked -> bake, used -> use
            single = _undouble(stem)
            if single:
                add(single)  # chopped -> chop
    if n > 4 and word.endswith("ing"):
        stem = word[:-3]
        add(stem)
        add(stem + "e")  # making -> make
        single = _undouble(stem)
        if single:
            add(single)  # running -> run
    return frozenset(forms)


class KeywordsReward(Reward):
    """Fraction of required words the text mentions, minus a penalty per forbidden word it mentions.

    Matching is case-insensitive and whole-word, and inflections count: ``"chop"`` is found in
    "chopped", "chopping" and "chops"; ``"dog"`` in "dogs"; ``"berry"`` in "berries" (see
    :func:`base_forms`). A multi-word entry ("olive oil") matches the same words in sequence.

    Score: ``coverage - forbidden_penalty * (number of distinct forbidden words present)``, where
    coverage is in [0, 1] (0 when ``words`` is empty). So with only required words the score is in
    [0, 1]; every forbidden word pulls it down by ``forbidden_penalty``.

    Args:
        words: Words the text should mention.
        forbidden: Words the text must not mention.
        forbidden_penalty: Subtracted once per distinct forbidden word present; non-negative.

    Example:
        >>> reward = KeywordsReward(words=["chop", "onion"], forbidden=["garlic"])
        >>> reward.score(["Chopping onions.", "Chop the garlic."])
        [1.0, -0.5]
    """

    name = "keywords"

    def __init__(
        self,
        words: Sequence[str] = (),
        forbidden: Sequence[str] = (),
        *,
        forbidden_penalty: float = 1.0,
    ) -> None:
        if isinstance(words, str) or isinstance(forbidden, str):
            raise ConfigError("words", "expected a list of words, got a single string")
        self.words = [self._validate_word("words", w) for w in words]
        self.forbidden = [self._validate_word("forbidden", w) for w in forbidden]
        if not self.words and not self.forbidden:
            raise ConfigError("words", "give at least one required word or one forbidden word")
        if not isinstance(forbidden_penalty, (int, float)) or not math.isfinite(forbidden_penalty):
            raise ConfigError("forbidden_penalty", f"must be a finite number, got {forbidden_penalty!r}")
        if forbidden_penalty < 0:
            raise ConfigError("forbidden_penalty", f"must be >= 0, got {forbidden_penalty!r}")
        self.forbidden_penalty = float(forbidden_penalty)
        self._word_forms = [self._phrase_forms(w) for w in self.words]
        self._forbidden_forms = [self._phrase_forms(w) for w in self.forbidden]

    @staticmethod
    def _validate_word(field: str, word: str) -> str:
        if not isinstance(word, str):
            raise ConfigError(field, f"every entry must be a string, got {word!r}")
        if not _tokens(word):
            raise ConfigError(field, f"every entry must contain a letter or digit, got {word!r}")
        return word

    @staticmethod
    def _phrase_forms(phrase: str) -> list[frozenset[str]]:
        return [base_forms(token) for token in _tokens(phrase)]

    @staticmethod
    def _contains(text_forms: list[frozenset[str]], phrase_forms: list[frozenset[str]]) -> bool:
        size = len(phrase_forms)
        for start in range(len(text_forms) - size + 1):
            if all(text_forms[start + i] & phrase_forms[i] for i in range(size)):
                return True
        return False

    def _analyse(self, text: str) -> tuple[list[str], list[str]]:
        text_forms = [base_forms(token) for token in _tokens(text)]
        found = [w for w, forms in zip(self.words, self._word_forms) if self._contains(text_forms, forms)]
        bad = [w for w, forms in zip(self.forbidden, self._forbidden_forms) if self._contains(text_forms, forms)]
        return found, bad

    def matches(self, text: str) -> dict[str, list[str]]:
        """Which required words ``text`` mentions, which it misses, and which forbidden words it has."""
        found, bad = self._analyse(text)
        return {"found": found, "missing": [w for w in self.words if w not in found], "forbidden": bad}

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        scores = []
        for text in continuations:
            found, bad = self._analyse(text)
            coverage = len(found) / len(self.words) if self.words else 0.0
            scores.append(coverage - self.forbidden_penalty * len(set(bad)))
        return scores

    @property
    def spec(self) -> KeywordsSpec:
        """The serializable spec that rebuilds this reward."""
        from shared_core.specs import KeywordsSpec

        return KeywordsSpec(words=self.words, forbidden=self.forbidden, forbidden_penalty=self.forbidden_penalty)
