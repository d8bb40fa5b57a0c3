"""Keyword coverage: reward text that mentions required words and penalise forbidden ones."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared_core.errors import ConfigError
from shared_core.rewards.base import Reward, RewardSpecBase, validated_spec

__all__ = [
    "KeywordsReward",
    "KeywordsSpec",
    "base_forms",
]

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


def base_forms(word: str, *, derived: bool = True) -> frozenset[str]:
    """Candidate base forms of one lower-cased word, by suffix stripping.

    Covers the regular English inflections: plural/3rd person ``-s``/``-es``, ``-ed``, ``-ing``,
    consonant doubling (chopped, running), ``y`` -> ``ies``/``ied``, and a dropped final ``e`` (making,
    baked). With ``derived`` (the default) also ``-er``/``-ier`` (bigger, painter -> paint), which
    applies to words of a *text*: a required word keeps its ``-er``, since "painter" is not "paint".
    Two words match when their sets of base forms intersect. Irregular forms (ran/run, went/go) are
    not covered. Stems shorter than two letters are never produced, so short words ("is", "bed",
    "sing") do not collapse onto unrelated ones.

    Example: ``base_forms("chopping") >= {"chop"}`` and ``base_forms("chops") >= {"chop"}``.
    """
    forms = {word}
    n = len(word)

    def add(stem: str) -> None:
        if len(stem) >= 2:
            forms.add(stem)

    endings = ("ies", "ied", "ier") if derived else ("ies", "ied")
    if n > 4 and word.endswith(endings):
        add(word[:-3] + "y")
    if n > 3 and word.endswith("es"):
        add(word[:-2])
    if n > 3 and word.endswith("s") and not word.endswith("ss"):
        add(word[:-1])
    for suffix in ("ed", "er") if derived else ("ed",):
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


class KeywordsSpec(RewardSpecBase):
    """``{"type": "keywords", "words": [...], "forbidden": [...], "forbidden_penalty": 1.0}`` (:class:`KeywordsReward`)."""

    type: Literal["keywords"] = "keywords"
    words: list[str] = Field(default_factory=list, description="Words the text should mention.")
    forbidden: list[str] = Field(default_factory=list, description="Words the text must not mention.")
    forbidden_penalty: float = Field(1.0, ge=0.0, allow_inf_nan=False,
                                     description="Subtracted per distinct forbidden word present; >= 0.")

    @field_validator("words", "forbidden")
    @classmethod
    def _real_words(cls, words: list[str]) -> list[str]:
        for word in words:
            if not _tokens(word):
                raise ValueError(f"every entry must contain a letter or digit, got {word!r}")
        return words

    @model_validator(mode="after")
    def _some_words(self) -> KeywordsSpec:
        if not self.words and not self.forbidden:
            raise ValueError("words: give at least one word in 'words' or 'forbidden'")
        return self

    def build(self) -> KeywordsReward:
        return KeywordsReward(spec=self)


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
    guidance = "target"

    def __init__(
        self,
        words: Sequence[str] = (),
        forbidden: Sequence[str] = (),
        *,
        forbidden_penalty: float = 1.0,
        spec: KeywordsSpec | None = None,
    ) -> None:
        if spec is None:
            if isinstance(words, str) or isinstance(forbidden, str):
                raise ConfigError("words", "expected a list of words, got a single string")
            spec = validated_spec(KeywordsSpec, words=list(words), forbidden=list(forbidden),
                                  forbidden_penalty=forbidden_penalty)
        self.spec: KeywordsSpec = spec
        self.words = list(spec.words)
        self.forbidden = list(spec.forbidden)
        self.forbidden_penalty = spec.forbidden_penalty
        self._word_forms = [self._phrase_forms(w) for w in self.words]
        self._forbidden_forms = [self._phrase_forms(w) for w in self.forbidden]

    @property
    def max_score(self) -> float:
        """1.0 with required words (all mentioned, nothing forbidden), else 0.0."""
        return 1.0 if self.words else 0.0

    @staticmethod
    def _phrase_forms(phrase: str) -> list[frozenset[str]]:
        return [base_forms(token, derived=False) for token in _tokens(phrase)]

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
