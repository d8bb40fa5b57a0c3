"""Weighted sum of rewards, and helpers to rate text or token candidates with any reward."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared_core.compute import current_stats
from shared_core.errors import ConfigError
from shared_core.result import RewardScore
from shared_core.rewards.base import Guidance, Reward, RewardSpecBase, TokenScorer
from shared_core.rewards.runtime import score_candidates, score_texts

__all__ = [
    "TextTokenScorer",
    "WeightedComponent",
    "WeightedReward",
    "WeightedSpec",
]

if TYPE_CHECKING:
    from shared_core.models import LocalModel
    from shared_core.result import GenerationStats


class TextTokenScorer:
    """Rates candidate tokens with a text reward: decodes ``prefix + [candidate]`` and calls ``score``.

    The fallback for rewards that only read text (keywords, length in words, safety, callables) when
    they are combined with a reward that has a faster token scorer; all k candidates go to the
    reward as one batch.
    """

    def __init__(self, reward: Reward, tokenizer: Any, *, prompt: str = "") -> None:
        self.reward = reward
        self.tokenizer = tokenizer
        self.prompt = prompt

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        prefix = [int(i) for i in prefix_ids]
        texts = [self.tokenizer.decode(prefix + [int(c)], skip_special_tokens=True) for c in candidate_ids]
        return self.reward.score(texts, prompt=self.prompt) if texts else []


class WeightedComponent(BaseModel):
    """One term of a weighted reward spec: ``{"weight": 0.5, "reward": {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    weight: float = Field(description="Finite and >= 0.")
    reward: RewardSpec  # noqa: F821  (the union of every reward spec; resolved by shared_core.specs)

    @field_validator("weight")
    @classmethod
    def _valid_weight(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"weight must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"weight must be >= 0, got {value!r} (use a reward that scores the unwanted "
                             "behaviour negatively)")
        return value


class WeightedSpec(RewardSpecBase):
    """``{"type": "weighted", "components": [{"weight": w, "reward": spec}, ...]}`` (:class:`WeightedReward`)."""

    type: Literal["weighted"] = "weighted"
    components: list[WeightedComponent] = Field(min_length=1)

    def build(self) -> WeightedReward:
        return WeightedReward([(c.weight, c.reward.build()) for c in self.components], spec=self)


class WeightedReward(Reward):
    """``sum(weight_i * reward_i)``: combines rewards, e.g. safety plus a length budget.

    :meth:`score_components` reports each component's own score keyed by its name ("safety",
    "length"; a repeated name gets a suffix: "keywords", "keywords#2"). Weights must be finite and
    non-negative (to penalise something, use a reward that scores it negatively); a zero weight keeps
    a component in the report without affecting the total.

    Args:
        components: ``(weight, reward)`` pairs; at least one.

    Example:
        >>> from shared_core.rewards import KeywordsReward, LengthReward
        >>> reward = WeightedReward([(1.0, KeywordsReward(["tea"])), (0.5, LengthReward(max_length=2))])
        >>> reward.score(["green tea please"])
        [0.75]
        >>> reward.score_components("green tea please")
        {'keywords': 1.0, 'length': -0.5}
    """

    name = "weighted"

    def __init__(self, components: Sequence[tuple[float, Reward]], *, spec: WeightedSpec | None = None) -> None:
        pairs = list(components)
        if not pairs:
            raise ConfigError("components", "give at least one (weight, reward) pair")
        self.components: list[tuple[float, Reward]] = []
        self.names: list[str] = []
        seen: dict[str, int] = {}
        for index, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ConfigError(f"components[{index}]", f"expected a (weight, reward) pair, got {pair!r}")
            weight, reward = pair
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ConfigError(f"components[{index}].weight", f"must be a finite number, got {weight!r}")
            if weight < 0:
                raise ConfigError(
                    f"components[{index}].weight",
                    f"must be >= 0, got {weight!r} (use a reward that scores the unwanted behaviour negatively)",
                )
            if not isinstance(reward, Reward):
                raise ConfigError(f"components[{index}].reward", f"expected a Reward, got {type(reward).__name__}")
            seen[reward.name] = seen.get(reward.name, 0) + 1
            self.names.append(reward.name if seen[reward.name] == 1 else f"{reward.name}#{seen[reward.name]}")
            self.components.append((float(weight), reward))
        if spec is None:
            specs = [reward.spec for _, reward in self.components]
            if all(part is not None for part in specs):  # a callable component has none
                spec = WeightedSpec(components=[WeightedComponent(weight=w, reward=part)
                                                for (w, _), part in zip(self.components, specs)])
        self.spec: WeightedSpec | None = spec

    @property
    def active(self) -> list[tuple[float, Reward]]:
        """The components that count toward the total (weight above 0)."""
        return [(weight, reward) for weight, reward in self.components if weight != 0.0]

    @property
    def max_score(self) -> float | None:
        """``sum(weight * max_score)`` when every counted component has a maximum; else ``None``."""
        maxima = [(weight, reward.max_score) for weight, reward in self.active]
        if any(top is None for _, top in maxima):
            return None
        return sum(weight * top for weight, top in maxima)  # type: ignore[operator]

    @property
    def guidance(self) -> Guidance:  # type: ignore[override]
        """``"arm"`` when every counted component is an ARM; else ``"target"`` if any component has a
        target (lookahead search scores the others on the same rollouts), else ``"token"`` if any rates
        tokens, else ``"judge"``."""
        kinds = {reward.guidance for _, reward in self.active} or {"judge"}
        if kinds == {"arm"}:
            return "arm"
        for kind in ("target", "token"):
            if kind in kinds:
                return kind  # type: ignore[return-value]
        return "judge"

    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        totals = [0.0] * len(continuations)
        for weight, reward in self.components:
            if weight == 0.0:
                continue
            for i, value in enumerate(score_texts(reward, continuations, prompt=prompt, stats=current_stats())):
                totals[i] += weight * value
        return totals

    def score_components(self, continuation: str, *, prompt: str = "") -> dict[str, float]:
        """Each component's own (unweighted) score, keyed by its name (each checked like any reward's)."""
        return {
            name: score_texts(reward, [continuation], prompt=prompt, stats=current_stats())[0]
            for name, (_, reward) in zip(self.names, self.components)
        }

    def evaluate(self, continuation: str, *, prompt: str = "") -> RewardScore:
        """The weighted total and the components, scoring each component once."""
        components = self.score_components(continuation, prompt=prompt)
        total = sum(weight * components[name] for name, (weight, _) in zip(self.names, self.components))
        return RewardScore(total=total, components=components)

    def token_scorer(
        self, model: LocalModel, prompt_ids: Sequence[int], stats: GenerationStats | None = None
    ) -> _WeightedTokenScorer | None:
        """Combines the components' token scorers; text-only components fall back to decoding.

        Returns ``None`` (score text instead) when no component has a token scorer of its own.
        Text-only components see an empty prompt here.
        """
        active = [(weight, reward) for weight, reward in self.components if weight != 0.0]
        scorers = [reward.token_scorer(model, prompt_ids, stats) for _, reward in active]
        if all(scorer is None for scorer in scorers):
            return None
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None and any(scorer is None for scorer in scorers):
            return None
        parts = [
            (weight, reward, scorer if scorer is not None else TextTokenScorer(reward, tokenizer))
            for (weight, reward), scorer in zip(active, scorers)
        ]
        return _WeightedTokenScorer(parts)


class _WeightedTokenScorer:
    """Weighted sum of component token scorers (each component's ratings checked like any reward's)."""

    def __init__(self, parts: list[tuple[float, Reward, TokenScorer]]) -> None:
        self._parts = parts

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        totals = [0.0] * len(candidate_ids)
        for weight, reward, scorer in self._parts:
            for i, value in enumerate(score_candidates(reward, scorer, prefix_ids, candidate_ids,
                                                       stats=current_stats())):
                totals[i] += weight * value
        return totals
