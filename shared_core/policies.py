"""Named policies: register a reward (and optionally a strategy) once, use it anywhere by name.

A policy name works wherever a reward is accepted (:func:`build_reward` resolves names here): ``build_reward("safe")``, ``deal generate
--reward safe``, ``ChatDeAL(policy="safe")``. The registry is process-wide and thread-safe.

Built-in policies:

- ``"safe"``: the embedded safety reward, ``{"type": "safety"}``.
- ``"concise"``: at most 60 words, ``{"type": "length", "max_words": 60}``.
- ``"strict"``: safety plus a 120-word budget,
  ``{"type": "weighted", "components": [{"weight": 1.0, "reward": {"type": "safety"}},
  {"weight": 0.5, "reward": {"type": "length", "max_words": 120}}]}``.

Example:
    >>> policy = register_policy("on-topic", {"type": "keywords", "words": ["invoice", "refund"]})
    >>> resolve_policy("on-topic").reward.words
    ['invoice', 'refund']
    >>> unregister_policy("on-topic")
"""

from __future__ import annotations

import re
import threading
from typing import Any

from shared_core.errors import ConfigError
from shared_core.rewards.base import Reward, RewardSpecBase
from shared_core.rewards.callable import CallableReward
from shared_core.specs import Policy, parse_policy, parse_reward_spec

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]*$")
_POLICIES: dict[str, Policy] = {}
_LOCK = threading.RLock()


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            "name", f"policy names are letters, digits and _ . : - (not starting with a symbol), got {name!r}"
        )
    return name


def register_policy(name: str, policy: Any, *, overwrite: bool = False) -> Policy:
    """Register ``policy`` under ``name`` and return it as a :class:`Policy`.

    Args:
        name: Letters, digits and ``_ . : -``.
        policy: A :class:`Policy`, a reward spec (dict, JSON string or spec object; it becomes the
            policy's reward) or a policy dict ``{"reward": ..., "strategy": ..., "params": ...}``.
        overwrite: Replace an existing policy of that name instead of raising.

    Raises:
        ConfigError: invalid name or spec, or the name is taken and ``overwrite`` is false.
    """
    name = _check_name(name)
    parsed = parse_policy(policy)
    with _LOCK:
        if name in _POLICIES and not overwrite:
            raise ConfigError("name", f"policy {name!r} is already registered; pass overwrite=True to replace it")
        _POLICIES[name] = parsed
    return parsed


def unregister_policy(name: str) -> None:
    """Remove a policy; a :class:`ConfigError` if there is none by that name."""
    with _LOCK:
        if name not in _POLICIES:
            raise ConfigError("name", f"no policy named {name!r}; registered policies: {', '.join(list_policies())}")
        del _POLICIES[name]


def list_policies() -> list[str]:
    """Names of the registered policies, sorted."""
    with _LOCK:
        return sorted(_POLICIES)


def resolve_policy(name: str) -> Policy:
    """The policy registered as ``name``.

    Raises:
        ConfigError: no such policy (the message lists the registered ones).
    """
    with _LOCK:
        policy = _POLICIES.get(name)
        if policy is None:
            raise ConfigError(
                "reward",
                f"unknown policy {name!r}; registered policies: {', '.join(sorted(_POLICIES))} "
                "(or pass a JSON reward spec such as '{\"type\": \"safety\"}')",
            )
        return policy


get_policy = resolve_policy


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
    if isinstance(obj, RewardSpecBase):
        return obj.build()
    if isinstance(obj, Policy):
        return None if obj.reward is None else obj.reward.build()
    if isinstance(obj, str):
        text = obj.strip()
        if not text.startswith(("{", "[")):
            return build_reward(resolve_policy(text))
        return parse_reward_spec(text).build()
    if isinstance(obj, dict):
        return parse_reward_spec(obj).build()
    if callable(obj):
        return CallableReward(obj)
    raise ConfigError(
        "reward",
        f"expected a reward spec (dict or JSON), a policy name, a Reward or a function, got {type(obj).__name__}",
    )


def check_reward(obj: Any) -> None:
    """Validates a reward argument like :func:`build_reward` does, without building it (no path checks)."""
    if obj is None or isinstance(obj, (Reward, RewardSpecBase, Policy)):
        return
    if isinstance(obj, str):
        text = obj.strip()
        if text.startswith(("{", "[")):
            parse_reward_spec(text)
        else:
            resolve_policy(text)
        return
    if isinstance(obj, dict):
        parse_reward_spec(obj)
        return
    if callable(obj):
        return
    raise ConfigError(
        "reward",
        f"expected a reward spec (dict or JSON), a policy name, a Reward or a function, got {type(obj).__name__}",
    )


def _register_builtins() -> None:
    register_policy("safe", Policy(reward={"type": "safety"}, description="The embedded safety reward."))
    register_policy(
        "concise", Policy(reward={"type": "length", "max_words": 60}, description="At most 60 words.")
    )
    register_policy(
        "strict",
        Policy(
            reward={
                "type": "weighted",
                "components": [
                    {"weight": 1.0, "reward": {"type": "safety"}},
                    {"weight": 0.5, "reward": {"type": "length", "max_words": 120}},
                ],
            },
            description="Safety plus a 120-word budget.",
        ),
    )


_register_builtins()

__all__ = [
    "build_reward",
    "check_reward",
    "get_policy",
    "list_policies",
    "register_policy",
    "resolve_policy",
    "unregister_policy",
]
