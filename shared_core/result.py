"""The one result type every decoding strategy returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "FinishReason",
    "GenerationResult",
    "GenerationStats",
    "RewardScore",
]

#: Why generation ended: a stop string, the EOS token, the token budget, or a cancellation
#: (``GenerationStream.close()``, a cancelled task, a client that went away).
FinishReason = Literal["stop", "eos", "length", "cancelled"]


@dataclass
class RewardScore:
    """A reward's verdict on one text: the total and, for composite rewards, each component."""

    total: float
    components: dict[str, float] = field(default_factory=dict)


@dataclass
class GenerationStats:
    """What a generation cost.

    ``forward_passes`` counts model calls per model name (policy model, reward models, ARMs, the
    sentence encoder of the safety reward), so strategies can be compared with plain greedy decoding
    at equal footing; ``tokens_processed`` counts the tokens each model read in those calls (a
    reward model re-reading whole texts shows up here, where an incremental one reads a few per step).
    """

    new_tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    forward_passes: dict[str, int] = field(default_factory=dict)
    tokens_processed: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def count_forward(self, model_name: str, n: int = 1, *, tokens: int = 0) -> None:
        self.forward_passes[model_name] = self.forward_passes.get(model_name, 0) + n
        if tokens:
            self.tokens_processed[model_name] = self.tokens_processed.get(model_name, 0) + int(tokens)

    @property
    def total_forward_passes(self) -> int:
        return sum(self.forward_passes.values())


@dataclass
class GenerationResult:
    """The text a strategy produced, why it stopped, how it scored and what it cost.

    ``text`` never contains the stop string or the EOS token; ``token_ids`` are the generated ids
    (up to and including the token that completed a stop string or the EOS token). When the reward
    fails on the finished text, the text is still returned: ``reward`` is ``None`` and
    ``reward_error`` says why (a ``RewardWarning`` is emitted too).
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    reward: RewardScore | None
    stats: GenerationStats
    strategy: str = "greedy"
    model: str = ""
    reward_error: str | None = None  # the reward failed on the finished text (then ``reward`` is None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by the CLI's ``--json`` and the adapters' metadata)."""
        return asdict(self)
