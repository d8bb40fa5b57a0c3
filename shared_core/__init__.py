"""deal's framework-free engine: reward-guided decoding on local Hugging Face models.

Data flows one way: a caller (an adapter, the CLI, the server) describes a call -> :func:`plan` and
:class:`Request` resolve and validate it -> a strategy decodes it with the request's logits
processors and reward -> a :class:`GenerationResult` -> :func:`report` (the metadata adapters return).

Example:
    >>> from shared_core import generate, load_model
    >>> model = load_model("smollm2")                                         # doctest: +SKIP
    >>> generate(model, "Give me two tips for staying safe online.").text    # doctest: +SKIP
"""

from shared_core.backends.remote import (
    BackendConnectionError,
    BackendError,
    BackendFeatureError,
    BackendRequestError,
    BackendServerError,
    BackendTimeoutError,
    RemoteModel,
    connect_model,
)
from shared_core.cancel import Cancelled, CancelToken
from shared_core.decoding import (
    GenerationStream,
    Strategy,
    generate,
    get_strategy,
    list_strategies,
    register_strategy,
    stream,
)
from shared_core.errors import ConfigError, DealError, ModelLoadError, RewardError
from shared_core.hf_compat import DealPerformanceWarning
from shared_core.models import DEFAULT_MODEL, EMBEDDED_MODELS, LocalModel, load_model
from shared_core.policies import build_reward, list_policies, register_policy, resolve_policy, unregister_policy
from shared_core.request import DEFAULT_STRATEGIES, Plan, Request, plan, report
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
from shared_core.rewards.runtime import RewardWarning
from shared_core.specs import Policy, RewardSpec, parse_reward_spec

__all__ = [
    "BackendConnectionError",
    "BackendError",
    "BackendFeatureError",
    "BackendRequestError",
    "BackendServerError",
    "BackendTimeoutError",
    "RemoteModel",
    "connect_model",
    "DEFAULT_MODEL",
    "DEFAULT_STRATEGIES",
    "EMBEDDED_MODELS",
    "CallableReward",
    "CancelToken",
    "Cancelled",
    "ClassifierReward",
    "ConfigError",
    "DealError",
    "DealPerformanceWarning",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "KeywordsReward",
    "LengthReward",
    "LocalModel",
    "ModelLoadError",
    "Plan",
    "Policy",
    "Request",
    "Reward",
    "RewardError",
    "RewardScore",
    "RewardSpec",
    "RewardWarning",
    "SafetyReward",
    "Strategy",
    "WeightedReward",
    "build_reward",
    "generate",
    "get_strategy",
    "list_policies",
    "list_strategies",
    "load_model",
    "parse_reward_spec",
    "plan",
    "register_policy",
    "register_strategy",
    "report",
    "resolve_policy",
    "stream",
    "unregister_policy",
]
