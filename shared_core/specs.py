"""Serializable reward specs and policies: JSON in, validated spec objects out, precise errors.

The same JSON works on the command line (``--reward``), in Python, in the adapters and in requests to
``deal serve``::

    {"type": "keywords", "words": ["chop", "onion"], "forbidden": ["garlic"]}
    {"type": "length", "max_words": 60}
    {"type": "classifier", "model": "path/to/reward-model", "label": "positive"}
    {"type": "safety"}
    {"type": "weighted", "components": [{"weight": 1.0, "reward": {"type": "safety"}},
                                        {"weight": 0.5, "reward": {"type": "length", "max_words": 120}}]}

Each spec class lives next to its reward (``shared_core.rewards.keywords.KeywordsSpec`` builds a
``KeywordsReward``); this module joins them into one discriminated union, :data:`RewardSpec`.
Specs are strict (no type coercion) and can never turn on ``trust_remote_code``.

Adding a reward type: write the spec class in the reward's module (``type: Literal["name"]`` plus
its fields and a ``build()``), then add it to the :data:`RewardSpec` union below.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared_core.errors import ConfigError
from shared_core.rewards.arm import ArmSpec
from shared_core.rewards.base import RewardSpecBase, spec_error
from shared_core.rewards.classifier import ClassifierSpec
from shared_core.rewards.keywords import KeywordsSpec
from shared_core.rewards.length import LengthSpec
from shared_core.rewards.safety import SafetySpec
from shared_core.rewards.weighted import WeightedComponent, WeightedSpec

__all__ = [
    "REWARD_TYPES",
    "ArmSpec",
    "BaseSpec",
    "ClassifierSpec",
    "KeywordsSpec",
    "LengthSpec",
    "MODEL_FREE_TYPES",
    "Policy",
    "RewardSpec",
    "SafetySpec",
    "WeightedComponent",
    "WeightedSpec",
    "loads_models",
    "parse_policy",
    "parse_reward_spec",
    "reward_to_json",
]

BaseSpec = RewardSpecBase  # the historical name

# Add a new spec class here to add a reward type.
RewardSpec = Annotated[
    Union[KeywordsSpec, LengthSpec, ClassifierSpec, SafetySpec, WeightedSpec, ArmSpec],
    Field(discriminator="type"),
]
WeightedComponent.model_rebuild(_types_namespace={"RewardSpec": RewardSpec})
WeightedSpec.model_rebuild()

_REWARD_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(RewardSpec)
REWARD_TYPES: tuple[str, ...] = tuple(cls.model_fields["type"].default for cls in get_args(get_args(RewardSpec)[0]))

#: Reward types whose spec loads no model (``loads_models`` is false for them and weighted sums of them).
MODEL_FREE_TYPES: frozenset[str] = frozenset({"keywords", "length", "weighted"})


def loads_models(spec: RewardSpecBase) -> bool:
    """Whether building and scoring ``spec`` loads a model (a classifier, an ARM, the safety encoder, a tokenizer).

    ``deal serve`` accepts inline specs from requests only when this is false (see its ``--allow-model-rewards``).
    """
    if isinstance(spec, WeightedSpec):
        return any(loads_models(component.reward) for component in spec.components)
    if isinstance(spec, LengthSpec):
        return spec.tokenizer is not None  # a folder to read; the default counts with the embedded tokenizer
    return spec.type not in MODEL_FREE_TYPES


class Policy(BaseModel):
    """A named decoding setup: a reward plus, optionally, a strategy and its parameters.

    ``{"reward": {"type": "safety"}, "strategy": "args", "params": {"top_k": 5}}``. The strategy
    name and params are read by the planner; ``reward`` may be ``None`` for a policy that only picks
    a strategy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    reward: RewardSpec | None = None
    strategy: str | None = Field(None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    def to_json(self) -> str:
        """Compact JSON that :func:`parse_policy` reads back to an equal policy."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), separators=(",", ":"))


def _load_json(text: str, root: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(root, f"not valid JSON: {exc}") from exc


def parse_reward_spec(obj: Any) -> RewardSpecBase:
    """A validated :data:`RewardSpec` from a dict, a JSON string, or a spec (returned as is).

    Raises:
        ConfigError: invalid JSON, an unknown ``type`` (the message lists valid ones), or a field
            that is missing or invalid (the message names its path, e.g. ``reward.components[0].weight``).
    """
    if isinstance(obj, RewardSpecBase):
        return obj
    if isinstance(obj, str):
        obj = _load_json(obj, "reward")
    if not isinstance(obj, dict):
        raise ConfigError("reward", f"expected a JSON object with a 'type' field, got {type(obj).__name__}")
    try:
        return _REWARD_SPEC_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise spec_error(exc, "reward", REWARD_TYPES) from None


def parse_policy(obj: Any) -> Policy:
    """A :class:`Policy` from a Policy, a reward spec (wrapped as the policy's reward), a dict or JSON.

    A dict with a ``type`` key is read as a reward spec; otherwise as a policy
    (``reward``/``strategy``/``params``/``description``).
    """
    if isinstance(obj, Policy):
        return obj
    if isinstance(obj, RewardSpecBase):
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
        raise spec_error(exc, "policy", REWARD_TYPES) from None


def reward_to_json(reward: Any) -> str:
    """The JSON spec of a reward (built from a spec or from Python arguments)."""
    spec = getattr(reward, "spec", None)
    if spec is None:
        raise ConfigError("reward", f"reward {getattr(reward, 'name', reward)!r} has no JSON spec (Python functions "
                                    "and rewards that run custom model code cannot be serialized)")
    return spec.to_json()
