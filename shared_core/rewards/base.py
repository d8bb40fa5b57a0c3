"""The reward interface every reward family implements.

A reward scores the *continuation* (the generated text, not the prompt); higher is better. Strategies
call :meth:`Reward.score` on a batch of candidate texts. Rewards that can rate candidate next tokens
faster than by re-scoring text (a classifier sharing the policy's tokenizer keeps a KV cache, say)
also return a :class:`TokenScorer` from :meth:`Reward.token_scorer`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from shared_core.models import LocalModel
    from shared_core.result import GenerationStats


class TokenScorer(Protocol):
    """Rates candidate next tokens after a committed prefix, reusing state between steps."""

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        """Scores of ``prefix + [c]`` for each candidate ``c`` (ids of the continuation only)."""
        ...


class Reward(ABC):
    """Scores continuations of a prompt. Subclasses validate their arguments in ``__init__``."""

    name: str = "reward"

    @abstractmethod
    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        """One score per continuation text; ``prompt`` is the user's request, for rewards that need it."""

    def score_components(self, continuation: str, *, prompt: str = "") -> dict[str, float]:
        """Per-component scores of one text; composite rewards override this."""
        return {self.name: self.score([continuation], prompt=prompt)[0]}

    def token_scorer(
        self, model: LocalModel, prompt_ids: Sequence[int], stats: GenerationStats | None = None
    ) -> TokenScorer | None:
        """An incremental scorer for ``model``'s token ids, or ``None`` to fall back to :meth:`score`."""
        return None
