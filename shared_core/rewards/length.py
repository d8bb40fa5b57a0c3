"""Length budget: zero inside the budget, increasingly negative outside it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from shared_core.errors import ConfigError
from shared_core.rewards.base import Reward

if TYPE_CHECKING:
    from shared_core.models import LocalModel
    from shared_core.result import GenerationStats
    from shared_core.specs import LengthSpec

LengthUnit = Literal["words", "tokens"]
DEFAULT_TOKENIZER = "smollm2"


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

    def __init__(
        self,
        min_length: int | None = None,
        max_length: int | None = None,
        *,
        unit: LengthUnit = "words",
        tokenizer: str | None = None,
    ) -> None:
        prefix = "min_tokens" if unit == "tokens" else "min_words"
        for field, value in ((prefix, min_length), (prefix.replace("min", "max"), max_length)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(field, f"must be a non-negative integer, got {value!r}")
        if min_length is None and max_length is None:
            raise ConfigError(prefix.replace("min", "max"), "give a minimum, a maximum or both")
        if min_length is not None and max_length is not None and min_length > max_length:
            raise ConfigError(prefix, f"must be <= the maximum ({max_length}), got {min_length}")
        if unit not in ("words", "tokens"):
            raise ConfigError("unit", f"must be 'words' or 'tokens', got {unit!r}")
        if tokenizer is not None and (not isinstance(tokenizer, str) or not tokenizer.strip()):
            raise ConfigError("tokenizer", f"must be a model alias or folder, got {tokenizer!r}")
        self.min_length = min_length
        self.max_length = max_length
        self.unit: LengthUnit = unit
        self.tokenizer = tokenizer
        if tokenizer is not None:
            from shared_core.rewards.classifier import resolve_source

            resolve_source("tokenizer", tokenizer)  # fail now on a missing folder, not mid-generation

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

        return load_shared(("tokenizer", str(source)), factory)

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        return [self.penalty(self.count(text)) for text in continuations]

    def token_scorer(
        self, model: LocalModel, prompt_ids: Sequence[int], stats: GenerationStats | None = None
    ) -> _TokenLengthScorer | None:
        """Counts the policy's own tokens (``unit="tokens"`` only; word counts need text)."""
        if self.unit != "tokens":
            return None
        return _TokenLengthScorer(self)

    @property
    def spec(self) -> LengthSpec:
        """The serializable spec that rebuilds this reward."""
        from shared_core.specs import LengthSpec

        if self.unit == "tokens":
            return LengthSpec(min_tokens=self.min_length, max_tokens=self.max_length, tokenizer=self.tokenizer)
        return LengthSpec(min_words=self.min_length, max_words=self.max_length)


class _TokenLengthScorer:
    """Length of ``prefix + [candidate]`` in tokens: the same for every candidate, no model call."""

    def __init__(self, reward: LengthReward) -> None:
        self._reward = reward

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        return [self._reward.penalty(len(prefix_ids) + 1)] * len(candidate_ids)
