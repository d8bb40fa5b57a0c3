"""Length budget: zero inside the budget, increasingly negative outside it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from shared_core.errors import ConfigError
from shared_core.rewards.base import Reward, RewardSpecBase, validated_spec

__all__ = [
    "LengthReward",
    "LengthSpec",
    "LengthUnit",
]

if TYPE_CHECKING:
    from shared_core.models import LocalModel
    from shared_core.result import GenerationStats

LengthUnit = Literal["words", "tokens"]
DEFAULT_TOKENIZER = "smollm2"


class LengthSpec(RewardSpecBase):
    """A length budget in words or in tokens (:class:`LengthReward`).

    Give ``min_words``/``max_words`` to count whitespace-separated words, or ``min_tokens``/
    ``max_tokens`` to count tokens of ``tokenizer`` (default the embedded chat model's); not both
    units at once. Each bound is optional, but at least one is required.
    """

    type: Literal["length"] = "length"
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=0)
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=0)
    tokenizer: str | None = Field(None, min_length=1, description="Tokenizer for token counts (alias or folder).")

    @model_validator(mode="after")
    def _one_unit(self) -> LengthSpec:
        words = self.min_words is not None or self.max_words is not None
        tokens = self.min_tokens is not None or self.max_tokens is not None
        if words and tokens:
            raise ValueError("max_tokens: use either min_words/max_words or min_tokens/max_tokens, not both")
        if not words and not tokens:
            raise ValueError("max_words: give at least one of min_words, max_words, min_tokens, max_tokens")
        if self.tokenizer is not None and not tokens:
            raise ValueError("tokenizer: only applies to min_tokens/max_tokens")
        low, high, unit = (
            (self.min_tokens, self.max_tokens, "tokens") if tokens else (self.min_words, self.max_words, "words")
        )
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_{unit}: min_{unit} ({low}) must be <= max_{unit} ({high})")
        return self

    def build(self) -> LengthReward:
        return LengthReward(spec=self)


class LengthReward(Reward):
    """Keeps a continuation within ``[min_length, max_length]`` words or tokens.

    Score 0 inside the budget; outside it, minus the relative violation:
    ``-(n - max) / max(max, 1)`` above the maximum and ``-(min - n) / max(min, 1)`` below the minimum.
    So a text 50% too long scores -0.5 whatever the budget, and maximizing the reward satisfies it.
    Either bound may be ``None`` (unbounded).

    Units: ``"words"`` counts whitespace-separated words. ``"tokens"`` counts tokens of ``tokenizer``
    (an alias or folder resolved like any model; ``None`` means ``"smollm2"``, the embedded chat model;
    loaded on first use). In a :meth:`token_scorer` the policy model's own tokens are counted, which is exact
    for what is being generated.

    Note that a partial continuation is always below a minimum; during guided decoding a minimum
    only starts to pay off when it is reached, so prefer a maximum for steering.

    Args:
        min_length: Smallest length within budget (inclusive), or ``None``.
        max_length: Largest length within budget (inclusive), or ``None``.
        unit: ``"words"`` or ``"tokens"``.
        tokenizer: For ``unit="tokens"``: which tokenizer counts tokens of text (``None``: "smollm2").

    Example:
        >>> reward = LengthReward(max_length=4)
        >>> reward.score(["one two three", "one two three four five six"])
        [0.0, -0.5]
    """

    name = "length"
    guidance = "target"

    def __init__(
        self,
        min_length: int | None = None,
        max_length: int | None = None,
        *,
        unit: LengthUnit = "words",
        tokenizer: str | None = None,
        spec: LengthSpec | None = None,
    ) -> None:
        if spec is None:
            if unit not in ("words", "tokens"):
                raise ConfigError("unit", f"must be 'words' or 'tokens', got {unit!r}")
            if tokenizer is not None and unit == "words":
                raise ConfigError("tokenizer", "only applies to unit='tokens'")
            spec = validated_spec(LengthSpec, **{f"min_{unit}": min_length, f"max_{unit}": max_length},
                                  tokenizer=tokenizer)
        self.spec: LengthSpec = spec
        tokens = spec.min_tokens is not None or spec.max_tokens is not None
        self.unit: LengthUnit = "tokens" if tokens else "words"
        self.min_length = spec.min_tokens if tokens else spec.min_words
        self.max_length = spec.max_tokens if tokens else spec.max_words
        self.tokenizer = spec.tokenizer
        if self.tokenizer is not None:
            from shared_core.rewards.classifier import resolve_source

            resolve_source("tokenizer", self.tokenizer)  # fail now on a missing folder, not mid-generation

    @property
    def max_score(self) -> float:
        """0.0: within the budget."""
        return 0.0

    def penalty(self, n: int) -> float:
        """The score of a text that is ``n`` units long."""
        if self.max_length is not None and n > self.max_length:
            return -(n - self.max_length) / max(self.max_length, 1)
        if self.min_length is not None and n < self.min_length:
            return -(self.min_length - n) / max(self.min_length, 1)
        return 0.0

    def count(self, text: str) -> int:
        """Length of ``text`` in this reward's unit."""
        if self.unit == "words":
            return len(text.split())
        return len(self._load_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def _load_tokenizer(self) -> Any:
        from shared_core.rewards.classifier import load_shared, resolve_source

        source = resolve_source("tokenizer", self.tokenizer or DEFAULT_TOKENIZER)

        def factory() -> Any:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(source))

        return load_shared(("tokenizer", str(source)), factory, model=False)

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        return [self.penalty(self.count(text)) for text in continuations]

    def token_scorer(
        self, model: LocalModel, prompt_ids: Sequence[int], stats: GenerationStats | None = None
    ) -> _TokenLengthScorer | None:
        """Counts the policy's own tokens (``unit="tokens"`` only; word counts need text)."""
        if self.unit != "tokens":
            return None
        return _TokenLengthScorer(self)


class _TokenLengthScorer:
    """Length of ``prefix + [candidate]`` in tokens: the same for every candidate, no model call."""

    def __init__(self, reward: LengthReward) -> None:
        self._reward = reward

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        return [self._reward.penalty(len(prefix_ids) + 1)] * len(candidate_ids)
