"""deal's framework-free engine: reward-guided decoding on local Hugging Face models.

Example:
    >>> from shared_core import generate, load_model
    >>> model = load_model("smollm2")                                         # doctest: +SKIP
    >>> generate(model, "Give me two tips for staying safe online.").text    # doctest: +SKIP
"""

from shared_core.decoding import (
    GenerationStream,
    Strategy,
    generate,
    get_strategy,
    list_strategies,
    register_strategy,
    stream,
)
from shared_core import tools as tools  # registers the "tool_call" strategy (forced, schema-valid calls)
from shared_core.errors import ConfigError, DealError, ModelLoadError, RewardError
from shared_core.models import DEFAULT_MODEL, EMBEDDED_MODELS, LocalModel, load_model
from shared_core.policies import list_policies, register_policy, resolve_policy, unregister_policy
from shared_core.result import GenerationResult, GenerationStats, RewardScore
from shared_core.rewards import (
    CallableReward,
    ClassifierReward,
    KeywordsReward,
    LengthReward,
    Reward,
    SafetyReward,
    WeightedReward,
)
from shared_core.specs import Policy, RewardSpec, build_reward, parse_reward_spec

__all__ = [
    "CallableReward",
    "ClassifierReward",
    "KeywordsReward",
    "LengthReward",
    "Policy",
    "RewardSpec",
    "SafetyReward",
    "WeightedReward",
    "build_reward",
    "list_policies",
    "parse_reward_spec",
    "register_policy",
    "resolve_policy",
    "unregister_policy",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "ConfigError",
    "DealError",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "LocalModel",
    "ModelLoadError",
    "Reward",
    "RewardError",
    "RewardScore",
    "Strategy",
    "generate",
    "get_strategy",
    "list_strategies",
    "load_model",
    "register_strategy",
    "stream",
]
