"""Private helpers shared by ChatDeAL and DeALLLM: settings, per-call resolution, message conversion.

Everything a user can get wrong (strategy, its parameters, reward spec, policy name, tools) is checked
here before any model is loaded, with a :class:`~shared_core.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from langchain_core.language_models import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel, Field, model_validator

import shared_core.decoding  # noqa: F401  (registers the built-in strategies)
import shared_core.tools  # noqa: F401  (registers the "tool_call" strategy)
from shared_core.decoding.base import get_strategy, validate_params
from shared_core.decoding.engine import DEFAULT_MAX_NEW_TOKENS
from shared_core.errors import ConfigError
from shared_core.planning import UNSET, choose_decoding, resolve_policy_name
from shared_core.result import GenerationResult
from shared_core.rewards.base import Reward
from shared_core.tools import ToolChoice, normalize_tools, resolve_tool_choice

T = TypeVar("T")

PROVIDER = "deal"

#: Standard client parameters LangChain tooling passes to every chat model; they mean nothing for a
#: local model and are accepted and ignored (everything else unknown is a strategy parameter).
IGNORED_CLIENT_PARAMS = frozenset({"api_key", "timeout", "max_retries", "base_url", "streaming", "model_kwargs"})

#: Per-call keyword arguments (``.bind(...)`` / ``invoke(..., **kw)``) with a meaning of their own;
#: any other keyword is a strategy parameter.
CALL_KEYS = frozenset({
    "model", "strategy", "reward", "policy", "strategy_params", "temperature", "max_tokens", "seed",
    "tools", "tool_choice",
})
_DROPPED_CALL_KEYS = frozenset({"ls_structured_output_format"})


class DeALSettings(BaseModel):
    """The fields ChatDeAL and DeALLLM share (see ChatDeAL's docstring)."""

    model: str = Field(default="smollm2", description="Embedded alias, model folder, .gguf file or hub id.")
    strategy: str | None = Field(default=None, description="Decoding strategy; default from policy/reward.")
    reward: Any = Field(default=None, description="Reward spec (dict/JSON), policy name, Reward or function.")
    policy: str | None = Field(default=None, description="Registered policy name (reward + strategy + params).")
    strategy_params: dict[str, Any] = Field(default_factory=dict, description="The strategy's own parameters.")
    temperature: float | None = Field(default=None, description="Sampling temperature; 0/None = greedy.")
    max_tokens: int | None = Field(default=None, description="The most new tokens (default 256).")
    stop: list[str] | None = Field(default=None, description="Stop strings (not returned).")
    seed: int | None = Field(default=None, description="Seed for reproducible sampling.")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    tool_call_max_tokens: int = Field(
        default=256, gt=0, description="Token budget floor for a forced tool call (a cut-off call would not parse)."
    )

    @model_validator(mode="before")
    @classmethod
    def _collect_strategy_params(cls, values: Any) -> Any:
        """Unknown keyword arguments are strategy parameters (``ChatDeAL(strategy="args", top_k=5)``)."""
        if not isinstance(values, dict):
            return values
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        extra = {k: v for k, v in values.items() if k not in known}
        if not extra:
            return values
        values = {k: v for k, v in values.items() if k in known}
        loose = {k: v for k, v in extra.items() if k not in IGNORED_CLIENT_PARAMS}
        if loose:
            values["strategy_params"] = {**loose, **dict(values.get("strategy_params") or {})}
        return values

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_settings()

    def check_settings(self) -> None:
        """Validates the instance's settings (no model work); called from ``__init__``."""
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or self.max_tokens <= 0):
            raise ConfigError("max_tokens", f"must be a positive integer, got {self.max_tokens!r}")
        plan_call(self, {}, stop=None)

    def ls_params(self, model_type: Literal["chat", "llm"], stop: list[str] | None,
                  overrides: Mapping[str, Any]) -> LangSmithParams:
        """The LangSmith tracing parameters of one call (``_get_ls_params`` of both models)."""
        params = LangSmithParams(ls_provider=PROVIDER, ls_model_name=overrides.get("model") or self.model,
                                 ls_model_type=model_type)
        temperature = overrides.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = float(temperature)
        max_tokens = overrides.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params


# --------------------------------------------------------------------------- per-call plan


@dataclass
class CallPlan:
    """Everything one generation needs, resolved from instance settings and per-call overrides."""

    model: str
    strategy: str
    reward: Any
    policy: str | None
    params: dict[str, Any]
    max_new_tokens: int
    stop: list[str] | None
    seed: int | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))

    @property
    def reward_label(self) -> Any:
        """A JSON-friendly description of the reward for metadata."""
        reward = self.reward
        if reward is None or isinstance(reward, (str, dict)):
            return reward
        spec = getattr(reward, "spec", None)
        if spec is not None and hasattr(spec, "to_dict"):
            return spec.to_dict()
        if hasattr(reward, "to_dict"):
            return reward.to_dict()
        return getattr(reward, "name", type(reward).__name__)


def _check_reward(reward: Any) -> None:
    """Validates a reward without building it (no model is loaded)."""
    from shared_core.specs import BaseSpec, Policy, parse_reward_spec

    if reward is None or isinstance(reward, (Reward, BaseSpec, Policy)):
        return
    if isinstance(reward, str):
        text = reward.strip()
        if text.startswith(("{", "[")):
            parse_reward_spec(text)
        else:
            from shared_core.policies import resolve_policy

            resolve_policy(text)
        return
    if isinstance(reward, Mapping):
        parse_reward_spec(dict(reward))
        return
    if callable(reward):
        return
    raise ConfigError(
        "reward",
        f"expected a reward spec (dict or JSON), a policy name, a Reward or a function, got {type(reward).__name__}",
    )


def plan_call(settings: DeALSettings, overrides: Mapping[str, Any], *, stop: list[str] | None) -> CallPlan:
    """Merges per-call overrides into the instance settings and validates the result.

    Per-call values replace the instance's; policy, reward, strategy and parameters combine by
    :mod:`shared_core.planning`'s rules, with a reward alone selecting a guided strategy. Keywords
    that are not call settings are strategy parameters.
    """
    overrides = {k: v for k, v in overrides.items() if k not in _DROPPED_CALL_KEYS}
    loose = {k: v for k, v in overrides.items() if k not in CALL_KEYS}
    policy_name = overrides["policy"] if "policy" in overrides else settings.policy
    policy = resolve_policy_name(policy_name) if policy_name is not None else None
    temperature = overrides.get("temperature", settings.temperature)
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or temperature < 0):
        raise ConfigError("temperature", f"must be a number >= 0, got {temperature!r}")
    decoding = choose_decoding(
        policy=policy, strategy=overrides.get("strategy") or settings.strategy, reward=settings.reward,
        call_reward=overrides.get("reward", UNSET), policy_from_call="policy" in overrides,
        param_layers=[settings.strategy_params, overrides.get("strategy_params") or {}, loose],
        steer=True, sample=bool(temperature),
    )
    strategy, reward, params = decoding.strategy, decoding.reward, decoding.params
    _check_reward(reward)
    strategy_cls = get_strategy(strategy)
    if temperature is not None and "temperature" in strategy_cls.Params.model_fields:
        params.setdefault("temperature", float(temperature))
    validate_params(strategy_cls, params)
    if strategy_cls.needs_reward and reward is None:
        raise ConfigError("reward", f"strategy {strategy!r} needs a reward (a spec, a policy name or a function)")
    max_tokens = overrides.get("max_tokens", settings.max_tokens)
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_tokens is None else max_tokens
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ConfigError("max_tokens", f"must be a positive integer, got {max_tokens!r}")
    seed = overrides.get("seed", settings.seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError("seed", f"must be an integer or None, got {seed!r}")
    stops = stop if stop is not None else settings.stop
    tools = normalize_tools(overrides.get("tools"))
    choice = resolve_tool_choice(overrides.get("tool_choice"), tools)
    model = overrides.get("model") or settings.model
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("model", f"must be a model alias, a path or a hub id, got {model!r}")
    return CallPlan(
        model=model, strategy=strategy, reward=reward, policy=policy_name, params=params,
        max_new_tokens=max_new_tokens, stop=list(stops) if stops else None, seed=seed, tools=tools, choice=choice,
    )


# --------------------------------------------------------------------------- results -> metadata


def usage_metadata(result: GenerationResult) -> dict[str, int]:
    """LangChain ``UsageMetadata`` from a result's stats."""
    prompt, new = result.stats.prompt_tokens, result.stats.new_tokens
    return {"input_tokens": prompt, "output_tokens": new, "total_tokens": prompt + new}


def response_metadata(result: GenerationResult, plan: CallPlan, *, model_name: str) -> dict[str, Any]:
    """What alignment did, in ``response_metadata``: strategy, policy, reward breakdown and stats."""
    reward = None
    if result.reward is not None:
        reward = {"total": result.reward.total, "components": dict(result.reward.components)}
    stats = result.stats
    return {
        "model_name": model_name,
        "model_provider": PROVIDER,
        "finish_reason": result.finish_reason,
        "strategy": result.strategy,
        "strategy_params": {k: v for k, v in plan.params.items() if k != "functions"},
        "policy": plan.policy,
        "reward_spec": plan.reward_label if result.strategy != "tool_call" else None,
        "reward": reward,
        "stats": {
            "prompt_tokens": stats.prompt_tokens,
            "new_tokens": stats.new_tokens,
            "seconds": round(stats.seconds, 4),
            "forward_passes": dict(stats.forward_passes),
            **({"extra": dict(stats.extra)} if stats.extra else {}),
        },
    }


# --------------------------------------------------------------------------- messages


def _text_of(message: BaseMessage, where: str) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, block in enumerate(content):
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping):
            kind = block.get("type")
            if kind == "text":
                parts.append(str(block.get("text", "")))
            elif kind in ("tool_use", "tool_call", "function_call", "reasoning", "thinking"):
                continue  # tool calls are read from message.tool_calls
            else:
                raise ConfigError(f"{where}.content[{j}]", f"content blocks of type {kind!r} are not supported "
                                  "by local text models; send text")
    return "".join(parts)


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the plain dicts shared_core renders (tool calls and results included)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": _text_of(message, where)})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": _text_of(message, where)})
        elif isinstance(message, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": _text_of(message, where)}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {"id": c.get("id"), "name": c["name"], "arguments": dict(c.get("args") or {})}
                    for c in message.tool_calls
                ]
            out.append(entry)
        elif isinstance(message, ToolMessage):
            text = _text_of(message, where)
            if getattr(message, "status", "success") == "error" and not text.lower().startswith("error"):
                text = f"Error: {text}"
            out.append({"role": "tool", "content": text, "tool_call_id": message.tool_call_id,
                        "name": message.name or ""})
        elif isinstance(message, FunctionMessage):
            out.append({"role": "tool", "content": _text_of(message, where), "name": message.name})
        elif isinstance(message, ChatMessage):
            role = {"human": "user", "ai": "assistant"}.get(message.role, message.role)
            if role not in ("system", "user", "assistant", "tool"):
                raise ConfigError(f"{where}.role", f"{message.role!r} is not one of system, user, assistant, tool")
            out.append({"role": role, "content": _text_of(message, where)})
        else:
            raise ConfigError(where, f"unsupported message type {type(message).__name__}")
    return out


# --------------------------------------------------------------------------- async bridge


async def iterate_in_thread(factory: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Runs a blocking iterator in a worker thread, so the event loop keeps serving other tasks.

    Each ``next()`` runs in the default executor; the iterator is closed (in a thread) if the consumer
    stops early.
    """
    loop = asyncio.get_running_loop()
    iterator = await loop.run_in_executor(None, factory)
    done = object()
    try:
        while True:
            item = await loop.run_in_executor(None, next, iterator, done)
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await loop.run_in_executor(None, close)


def dumps_args(arguments: Mapping[str, Any]) -> str:
    """Tool arguments as the JSON string ``tool_call_chunks`` carry."""
    return json.dumps(dict(arguments), ensure_ascii=False)
