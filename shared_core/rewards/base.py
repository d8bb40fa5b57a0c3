"""The reward interface every reward family implements, and the base of their serializable specs.

A reward scores the *continuation* (the generated text, not the prompt); higher is better. Strategies
call :meth:`Reward.score` on a batch of candidate texts. Rewards that can rate candidate next tokens
faster than by re-scoring text (a classifier sharing the policy's tokenizer keeps a KV cache, say)
also return a :class:`TokenScorer` from :meth:`Reward.token_scorer`.

Every reward family is one module holding its :class:`RewardSpecBase` subclass (the JSON form: a
``type`` tag plus fields, validated strictly) next to its :class:`Reward` class. A reward built from
arguments validates them by building its spec, so both paths share one set of rules, and keeps that
spec as ``reward.spec`` (``None`` for what JSON cannot describe: a Python function).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from shared_core.errors import ConfigError

if TYPE_CHECKING:
    from shared_core.models import LocalModel
    from shared_core.result import GenerationStats, RewardScore

__all__ = ["Guidance", "Reward", "RewardSpecBase", "TokenScorer", "spec_error", "validated_spec"]

#: How a reward is best steered toward (the planner picks a strategy from it, see ``shared_core.request``):
#: ``"target"`` a text reward with a known maximum (keywords, length budgets): lookahead search reaches it;
#: ``"token"`` a dense reward that rates candidate tokens (a classifier reward model): token-level guidance;
#: ``"judge"`` a whole-text judge (safety, Python functions): sample several answers and rerank;
#: ``"arm"`` an autoregressive reward model: its next-token log-probs guide decoding (GenARM).
Guidance = Literal["target", "token", "judge", "arm"]


class TokenScorer(Protocol):
    """Rates candidate next tokens after a committed prefix, reusing state between steps."""

    def score_candidates(self, prefix_ids: Sequence[int], candidate_ids: Sequence[int]) -> list[float]:
        """Scores of ``prefix + [c]`` for each candidate ``c`` (ids of the continuation only)."""
        ...


class RewardSpecBase(BaseModel):
    """Base of reward specs: strict types, unknown fields are errors, specs are immutable values.

    Strict means no coercion: ``"max_words": "3"`` or ``true`` is an error, not 3 or 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_remote_code(cls, data: Any) -> Any:
        if isinstance(data, dict) and "trust_remote_code" in data:
            raise ValueError(
                "trust_remote_code: cannot be set in a reward spec (specs come from config files and requests, "
                "so they never run model code); construct the reward in Python to opt in, e.g. "
                "ClassifierReward(model, trust_remote_code=True)")
        return data

    def build(self) -> Reward:
        """The reward this spec describes (checks model paths; loads no model)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, without unset optional fields."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        """Compact JSON that ``parse_reward_spec`` reads back to an equal spec."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


S = TypeVar("S", bound=RewardSpecBase)
_FIELD_PREFIX = re.compile(r"^([a-z_]+): (.*)$", re.DOTALL)


def _location(loc: Sequence[Any], root: str, tags: Sequence[str]) -> str:
    """Readable field path of a pydantic error, without a discriminated union's tag entries."""
    parts = [root]
    for i, part in enumerate(loc):
        previous = loc[i - 1] if i else None
        if isinstance(part, str) and part in tags and (i == 0 or previous == "reward"):
            continue  # the union's branch name, not a field
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def spec_error(exc: ValidationError, root: str, tags: Sequence[str] = ()) -> ConfigError:
    """A :class:`ConfigError` naming the first bad field of ``exc`` (paths like ``reward.components[0].weight``)."""
    problems = []
    valid = ", ".join(tags)
    for error in exc.errors():
        field = _location(tuple(error["loc"]), root, tags)
        kind = error["type"]
        if kind == "union_tag_invalid":
            tag = error.get("ctx", {}).get("tag", error.get("input"))
            problems.append((f"{field}.type", f"unknown reward type {tag!r}; valid types: {valid}"))
        elif kind == "union_tag_not_found":
            problems.append((f"{field}.type", f"missing 'type'; valid types: {valid}"))
        elif kind == "extra_forbidden":
            problems.append((field, "unknown field (not allowed here)"))
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            if "input" in error and not isinstance(error["input"], (dict, list)) and kind != "value_error":
                message += f", got {error['input']!r}"
            named = _FIELD_PREFIX.match(message)
            if named and kind == "value_error":  # a check across fields names the field it blames
                field, message = f"{field}.{named.group(1)}", named.group(2)
            problems.append((field, message))
    field, message = problems[0]
    for other_field, other_message in problems[1:]:
        message += f"; {other_field}: {other_message}"
    return ConfigError(field, message)


def validated_spec(spec_class: type[S], **fields: Any) -> S:
    """``spec_class(**fields)``, with a validation error turned into a :class:`ConfigError` on the field."""
    try:
        return spec_class(**fields)
    except ValidationError as exc:
        raise _bare(spec_error(exc, "reward")) from None


def _bare(error: ConfigError) -> ConfigError:
    """Python callers name fields without the ``reward.`` prefix JSON paths carry."""
    return ConfigError(error.field.removeprefix("reward."), str(error).split(": ", 1)[1])


class Reward(ABC):
    """Scores continuations of a prompt. Subclasses validate their arguments in ``__init__``.

    Class attributes a reward declares:

    * ``name``: its name in reports and errors;
    * ``guidance``: how it is best steered toward (:data:`Guidance`);
    * :attr:`max_score`: the score at which it is fully satisfied, or ``None`` when open-ended.
    """

    name: str = "reward"
    guidance: ClassVar[Guidance] = "judge"
    spec: RewardSpecBase | None = None

    @abstractmethod
    def score(self, continuations: Sequence[str], *, prompt: str = "") -> list[float]:
        """One score per continuation text; ``prompt`` is the user's request, for rewards that need it."""

    @property
    def max_score(self) -> float | None:
        """The best score this reward can give, when there is one a text can reach; ``None`` if open-ended."""
        return None

    def score_components(self, continuation: str, *, prompt: str = "") -> dict[str, float]:
        """Per-component scores of one text; composite rewards override this."""
        return {self.name: self.score([continuation], prompt=prompt)[0]}

    def evaluate(self, continuation: str, *, prompt: str = "") -> RewardScore:
        """The verdict reported with a generation: the total and per-component scores (each scored once)."""
        from shared_core.result import RewardScore

        total = self.score([continuation], prompt=prompt)[0]
        return RewardScore(total=total, components={self.name: total})

    def token_scorer(
        self, model: LocalModel, prompt_ids: Sequence[int], stats: GenerationStats | None = None
    ) -> TokenScorer | None:
        """An incremental scorer for ``model``'s token ids, or ``None`` to fall back to :meth:`score`."""
        return None

    def visit(self, fn: Callable[[Reward, float], None], scale: float = 1.0) -> None:
        """Calls ``fn(reward, weight)`` for this reward and, in composites, every component (weights multiplied)."""
        fn(self, scale)
