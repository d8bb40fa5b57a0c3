"""Serializable reward specs and policies: JSON in, :class:`Reward` objects out, precise errors.

The same JSON works on the command line (``--reward``), in Python and in the adapters::

    {"type": "keywords", "words": ["chop", "onion"], "forbidden": ["garlic"]}
    {"type": "length", "max_words": 60}
    {"type": "classifier", "model": "path/to/reward-model", "label": "positive"}
    {"type": "safety"}
    {"type": "weighted", "components": [{"weight": 1.0, "reward": {"type": "safety"}},
                                        {"weight": 0.5, "reward": {"type": "length", "max_words": 120}}]}

:func:`build_reward` also takes a registered policy name ("safe", "concise", "strict"; see
:mod:`shared_core.policies`), a :class:`Reward`, or a plain Python function ``texts -> scores``.

Adding a reward type: write a spec class below (``type: Literal["name"]`` plus its fields and a
``build()`` that returns the :class:`Reward`), then add the class to the :data:`RewardSpec` union.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared_core.errors import ConfigError
from shared_core.rewards.base import Reward


class BaseSpec(BaseModel):
    """Common base of reward specs: unknown fields are errors; specs are immutable values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def build(self) -> Reward:
        """The reward this spec describes (validates model paths; loads no model)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, without unset optional fields."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        """Compact JSON that :func:`parse_reward_spec` reads back to an equal spec."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


class KeywordsSpec(BaseSpec):
    """Coverage of required words minus a penalty per forbidden word (:class:`KeywordsReward`)."""

    type: Literal["keywords"] = "keywords"
    words: list[str] = Field(default_factory=list, description="Words the text should mention.")
    forbidden: list[str] = Field(default_factory=list, description="Words the text must not mention.")
    forbidden_penalty: float = Field(1.0, description="Subtracted per distinct forbidden word present.")

    @field_validator("words", "forbidden")
    @classmethod
    def _non_empty_words(cls, words: list[str]) -> list[str]:
        for word in words:
            if not word.strip():
                raise ValueError(f"entries must be non-empty words, got {word!r}")
        return words

    @field_validator("forbidden_penalty")
    @classmethod
    def _valid_penalty(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"must be a finite number >= 0, got {value!r}")
        return value

    @model_validator(mode="after")
    def _some_words(self) -> KeywordsSpec:
        if not self.words and not self.forbidden:
            raise ValueError("give at least one word in 'words' or 'forbidden'")
        return self

    def build(self) -> Reward:
        from shared_core.rewards.keywords import KeywordsReward

        return KeywordsReward(self.words, self.forbidden, forbidden_penalty=self.forbidden_penalty)


class LengthSpec(BaseSpec):
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
            raise ValueError("use either min_words/max_words or min_tokens/max_tokens, not both")
        if not words and not tokens:
            raise ValueError("give at least one of min_words, max_words, min_tokens, max_tokens")
        if self.tokenizer is not None and not tokens:
            raise ValueError("'tokenizer' only applies to min_tokens/max_tokens")
        low, high, unit = (
            (self.min_tokens, self.max_tokens, "tokens") if tokens else (self.min_words, self.max_words, "words")
        )
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_{unit} ({low}) must be <= max_{unit} ({high})")
        return self

    def build(self) -> Reward:
        from shared_core.rewards.length import LengthReward

        if self.min_tokens is not None or self.max_tokens is not None:
            return LengthReward(self.min_tokens, self.max_tokens, unit="tokens", tokenizer=self.tokenizer)
        return LengthReward(self.min_words, self.max_words, unit="words")


class ClassifierSpec(BaseSpec):
    """A sequence classifier's logit or probability for one label (:class:`ClassifierReward`)."""

    type: Literal["classifier"] = "classifier"
    model: str = Field(min_length=1, description="Model folder, alias (e.g. 'smollm2') or hub id.")
    label: StrictStr | StrictInt | None = Field(None, description="Label name or index; default: the last label.")
    output: Literal["logit", "probability"] = "logit"
    include_prompt: bool = True
    max_length: int = Field(512, gt=0)
    batch_size: int = Field(16, gt=0)
    device: str = Field("auto", description="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bf16 on CUDA, fp32 on CPU; 'bfloat16' is about 2x faster on CPUs with bf16 units."
    )
    trust_remote_code: bool = False

    def build(self) -> Reward:
        from shared_core.rewards.classifier import ClassifierReward

        return ClassifierReward(
            self.model,
            self.label,
            output=self.output,
            include_prompt=self.include_prompt,
            max_length=self.max_length,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
        )


class SafetySpec(BaseSpec):
    """The embedded offline safety reward (:class:`SafetyReward`)."""

    type: Literal["safety"] = "safety"
    exemplars: str | None = Field(None, min_length=1, description="JSON file of safe/harmful texts.")

    def build(self) -> Reward:
        from shared_core.rewards.safety import SafetyReward

        return SafetyReward(self.exemplars)


class WeightedComponent(BaseModel):
    """One term of a weighted reward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(description="Finite and >= 0.")
    reward: RewardSpec

    @field_validator("weight")
    @classmethod
    def _valid_weight(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"weight must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"weight must be >= 0, got {value!r}")
        return value


class WeightedSpec(BaseSpec):
    """Weighted sum of rewards (:class:`WeightedReward`)."""

    type: Literal["weighted"] = "weighted"
    components: list[WeightedComponent] = Field(min_length=1)

    def build(self) -> Reward:
        from shared_core.rewards.weighted import WeightedReward

        return WeightedReward([(c.weight, c.reward.build()) for c in self.components])


class ArmSpec(BaseSpec):
    """An autoregressive reward model for GenARM: ``weight * log p_ARM(text | prompt)`` (:class:`ArmReward`)."""

    type: Literal["arm"] = "arm"
    model: str = Field(min_length=1, description="Causal LM sharing the policy's tokenizer: alias, folder or hub id.")
    weight: float = Field(1.0, description="GenARM's alpha: finite and >= 0.")
    instruction: str | None = Field(None, min_length=1, description="Preference statement for a prompted ARM.")

    @field_validator("weight")
    @classmethod
    def _valid_alpha(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight (alpha) must be a finite number >= 0, got {value!r}")
        return value

    def build(self) -> Reward:
        from shared_core.rewards.arm import ArmReward

        return ArmReward(self.model, self.weight, self.instruction)


# Add a new spec class here to add a reward type.
RewardSpec = Annotated[
    Union[KeywordsSpec, LengthSpec, ClassifierSpec, SafetySpec, WeightedSpec, ArmSpec],
    Field(discriminator="type"),
]
WeightedComponent.model_rebuild()
WeightedSpec.model_rebuild()

_REWARD_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(RewardSpec)
REWARD_TYPES: tuple[str, ...] = tuple(cls.model_fields["type"].default for cls in get_args(get_args(RewardSpec)[0]))


class Policy(BaseModel):
    """A named decoding setup: a reward plus, optionally, a strategy and its parameters.

    ``{"reward": {"type": "safety"}, "strategy": "args", "params": {"top_k": 5}}``. The strategy
    name and params are read by the decoding layer; ``reward`` may be ``None`` for a policy that only
    picks a strategy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reward: RewardSpec | None = None
    strategy: str | None = Field(None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    def to_json(self) -> str:
        """Compact JSON that :func:`parse_policy` reads back to an equal policy."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), separators=(",", ":"))


# -- parsing ---------------------------------------------------------------------------------------


def _location(loc: tuple[Any, ...], root: str) -> str:
    """Readable field path of a pydantic error, without the union's tag entries."""
    parts = [root]
    for i, part in enumerate(loc):
        previous = loc[i - 1] if i else None
        if isinstance(part, str) and part in REWARD_TYPES and (i == 0 or previous == "reward"):
            continue  # the discriminated union's branch name, not a field
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _describe_error(error: Any, root: str) -> tuple[str, str]:
    field = _location(tuple(error["loc"]), root)
    kind = error["type"]
    valid = ", ".join(REWARD_TYPES)
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", error.get("input"))
        return f"{field}.type", f"unknown reward type {tag!r}; valid types: {valid}"
    if kind == "union_tag_not_found":
        return f"{field}.type", f"missing 'type'; valid types: {valid}"
    if kind == "extra_forbidden":
        return field, "unknown field (not allowed here)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return field, message


def _config_error(exc: ValidationError, root: str) -> ConfigError:
    problems = [_describe_error(error, root) for error in exc.errors()]
    field, message = problems[0]
    for other_field, other_message in problems[1:]:
        message += f"; {other_field}: {other_message}"
    return ConfigError(field, message)


def _load_json(text: str, root: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(root, f"not valid JSON: {exc}") from exc


def parse_reward_spec(obj: Any) -> RewardSpec:
    """A validated :data:`RewardSpec` from a dict, a JSON string, or a spec (returned as is).

    Raises:
        ConfigError: invalid JSON, an unknown ``type`` (the message lists valid ones), or a field
            that is missing or invalid (the message names its path, e.g. ``reward.components[0].weight``).
    """
    if isinstance(obj, BaseSpec):
        return obj
    if isinstance(obj, str):
        obj = _load_json(obj, "reward")
    if not isinstance(obj, dict):
        raise ConfigError("reward", f"expected a JSON object with a 'type' field, got {type(obj).__name__}")
    try:
        return _REWARD_SPEC_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise _config_error(exc, "reward") from None


def parse_policy(obj: Any) -> Policy:
    """A :class:`Policy` from a Policy, a reward spec (wrapped as the policy's reward), a dict or JSON.

    A dict with a ``type`` key is read as a reward spec; otherwise as a policy
    (``reward``/``strategy``/``params``/``description``).
    """
    if isinstance(obj, Policy):
        return obj
    if isinstance(obj, BaseSpec):
        return Policy(reward=obj)
    if isinstance(obj, str):
        obj = _load_json(obj, "policy")
    if not isinstance(obj, dict):
        raise ConfigError("policy", f"expected a policy or a reward spec, got {type(obj).__name__}")
    if "type" in obj:
        return Policy(reward=parse_reward_spec(obj))
    try:
        return Policy.model_validate(obj)
    except ValidationError as exc:
        raise _config_error(exc, "policy") from None


def build_reward(obj: Any) -> Reward | None:
    """A :class:`Reward` from whatever a user passed as ``reward``.

    Accepts ``None`` (no reward: returns ``None``), a :class:`Reward` (returned as is), a spec, a
    :class:`Policy` (its reward), a dict or JSON string spec, a registered policy name ("safe"), or a
    Python function ``texts -> scores`` (wrapped in :class:`CallableReward`). Model paths are checked
    here; no model is loaded until the reward first scores.

    Raises:
        ConfigError: for anything invalid, before any model work.
    """
    if obj is None or isinstance(obj, Reward):
        return obj
    if isinstance(obj, BaseSpec):
        return obj.build()
    if isinstance(obj, Policy):
        return None if obj.reward is None else obj.reward.build()
    if isinstance(obj, str):
        text = obj.strip()
        if not text.startswith(("{", "[")):
            from shared_core.policies import resolve_policy

            return build_reward(resolve_policy(text))
        return parse_reward_spec(text).build()
    if isinstance(obj, dict):
        return parse_reward_spec(obj).build()
    if callable(obj):
        from shared_core.rewards.callable import CallableReward

        return CallableReward(obj)
    raise ConfigError(
        "reward",
        f"expected a reward spec (dict or JSON), a policy name, a Reward or a function, got {type(obj).__name__}",
    )


def reward_to_json(reward: Reward) -> str:
    """The JSON spec of a reward built from a spec (or of any built-in reward class)."""
    spec = getattr(reward, "spec", None)
    if spec is None:
        raise ConfigError("reward", f"reward {reward.name!r} has no JSON spec (Python functions cannot be serialized)")
    return spec.to_json()


__all__ = [
    "REWARD_TYPES",
    "ArmSpec",
    "BaseSpec",
    "ClassifierSpec",
    "KeywordsSpec",
    "LengthSpec",
    "Policy",
    "RewardSpec",
    "SafetySpec",
    "WeightedComponent",
    "WeightedSpec",
    "build_reward",
    "parse_policy",
    "parse_reward_spec",
    "reward_to_json",
]
