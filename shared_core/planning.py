"""One rule for combining a named policy with an explicit reward, strategy and parameters.

``generate(policy=...)``, the LangChain models and the LlamaIndex LLM all take a policy (a reward, a
strategy and its parameters under one name) next to explicit settings, some on the model instance and
some per call. They all resolve them here, so the precedence is the same everywhere:

* an explicit ``reward`` wins over the policy's reward; a policy named per call brings its own reward
  (the instance's reward is dropped);
* an explicit ``strategy`` wins over the policy's strategy; with neither, the default depends on the
  caller: ``generate`` stays greedy (a reward alone is only scored), while the framework adapters,
  whose users set a reward to steer, pick the first registered of :data:`REWARD_STRATEGY_PREFERENCE`;
* the policy's parameters apply when its strategy is the one used (or it names none), then each
  layer of explicit parameters in order, later layers winning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared_core.errors import ConfigError
from shared_core.specs import Policy

#: Strategies tried, in order, when a reward is set, no strategy is named and the caller steers by default.
REWARD_STRATEGY_PREFERENCE: tuple[str, ...] = ("args", "best_of_n", "deal")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Marks a per-call setting the call did not give (``None`` may be a deliberate value).
UNSET: Any = _Unset()


@dataclass(frozen=True)
class DecodingChoice:
    """The strategy, reward and parameters one generation uses, and the policy they came from."""

    strategy: str
    reward: Any
    params: dict[str, Any]
    policy: Policy | None


def default_strategy(reward: Any, *, steer: bool, sample: bool = False) -> str:
    """The strategy when none is named: reward-guided if ``steer`` and a reward is set, else greedy or sample."""
    if steer and reward is not None:
        from shared_core.decoding.base import list_strategies

        registered = set(list_strategies())
        for name in REWARD_STRATEGY_PREFERENCE:
            if name in registered:
                return name
    return "sample" if sample else "greedy"


def resolve_policy_name(name: Any, field: str = "policy") -> Policy:
    """The registered policy ``name``; an unknown or empty name is a ConfigError on ``field`` listing the valid ones."""
    from shared_core.policies import list_policies, resolve_policy

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(field, f"must be a registered policy name ({', '.join(list_policies())}), got {name!r}")
    try:
        return resolve_policy(name)
    except ConfigError as exc:
        raise ConfigError(field, str(exc).split(": ", 1)[-1]) from None


def choose_decoding(
    *,
    policy: Policy | None,
    strategy: str | None,
    reward: Any = None,
    call_reward: Any = UNSET,
    policy_from_call: bool = False,
    param_layers: Iterable[Mapping[str, Any] | None] = (),
    steer: bool = False,
    sample: bool = False,
) -> DecodingChoice:
    """Applies this module's precedence rules.

    Args:
        policy: the policy in effect (the call's if it named one, else the instance's), or ``None``.
        strategy: the explicitly named strategy (the call's, else the instance's), or ``None``.
        reward: the instance's (or only) explicit reward.
        call_reward: the call's reward, or :data:`UNSET` when the call gave none.
        policy_from_call: whether ``policy`` was named by the call (then ``reward`` is dropped).
        param_layers: explicit strategy parameters, lowest precedence first; ``None`` layers are skipped.
        steer: whether a reward alone selects a reward-guided strategy (see :func:`default_strategy`).
        sample: whether the unguided default is ``"sample"`` rather than ``"greedy"``.

    Raises:
        ConfigError: a parameter layer that is not a dict (field ``strategy_params``).
    """
    if call_reward is not UNSET:
        chosen_reward = call_reward
    else:
        chosen_reward = None if policy_from_call else reward
    if chosen_reward is None and policy is not None:
        chosen_reward = policy.reward
    chosen = strategy or (policy.strategy if policy is not None else None)
    chosen = chosen or default_strategy(chosen_reward, steer=steer, sample=sample)
    params: dict[str, Any] = {}
    if policy is not None and policy.strategy in (None, chosen):
        params.update(policy.params)
    for layer in param_layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ConfigError("strategy_params", f"must be a dict of strategy parameters, got {type(layer).__name__}")
        params.update(layer)
    return DecodingChoice(strategy=chosen, reward=chosen_reward, params=params, policy=policy)
