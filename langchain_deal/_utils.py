"""Private helpers shared by ChatDeAL and DeALLLM: settings, per-call resolution, message conversion.

Everything a user can get wrong (strategy, its parameters, reward spec, policy name, tools) is checked
here before any model is loaded, with a :class:`~shared_core.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
from pydantic import BaseModel, Field, SecretStr, model_validator

from shared_core.cancel import CancelToken
from shared_core.decoding import get_strategy
from shared_core.errors import ConfigError
from shared_core.request import DEFAULT_MAX_NEW_TOKENS, Plan, Request, plan, report
from shared_core.result import GenerationResult
from shared_core.tools import ToolChoice, normalize_tools, resolve_tool_choice

T = TypeVar("T")

PROVIDER = "deal"

#: Standard client parameters LangChain tooling passes to every chat model that are not fields here; they
#: are accepted and ignored (everything else unknown is a strategy parameter). ``api_key``, ``base_url``,
#: ``timeout`` and ``max_retries`` are fields, used with a remote server (and ignored for a local model).
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
    base_url: str | None = Field(
        default=None, description="An OpenAI-compatible server (vLLM, SGLang, llama.cpp, a chat API); `model` is "
                                  "then the served model's id (default: the server's only model).")
    api_key: SecretStr | None = Field(default=None, description="The server's API key (with base_url).")
    tokenizer: str | None = Field(
        default=None, description="Tokenizer (folder or hub id) of the served model when the server does not say.")
    chat_model: Any = Field(
        default=None, description="Any LangChain chat model to align through URIAL (+ best-of-n with a reward).")
    timeout: float | None = Field(default=None, description="Seconds per server request (with base_url).")
    max_retries: int | None = Field(default=None, description="Retries per server request (with base_url).")

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
        check_backend_settings(self)
        check_call(self, {}, stop=None)

    def ls_params(self, model_type: Literal["chat", "llm"], stop: list[str] | None,
                  overrides: Mapping[str, Any]) -> LangSmithParams:
        """The LangSmith tracing parameters of one call (``_get_ls_params`` of both models)."""
        name = overrides.get("model") or self.model
        if self.chat_model is not None:
            from langchain_deal._backends import chat_model_name

            name = chat_model_name(self.chat_model)
        elif self.base_url and not overrides.get("model") and "model" not in self.model_fields_set:
            name = self.base_url  # the server's only model, whose id is known once it has been asked
        params = LangSmithParams(ls_provider=PROVIDER, ls_model_name=name, ls_model_type=model_type)
        temperature = overrides.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = float(temperature)
        max_tokens = overrides.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params


def check_backend_settings(settings: DeALSettings) -> None:
    """Checks ``base_url``, ``chat_model``, ``tokenizer``, ``timeout`` and ``max_retries`` (no network)."""
    from langchain_core.language_models import BaseChatModel

    if settings.base_url is not None:
        if not isinstance(settings.base_url, str) or not settings.base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"must be an http(s) URL such as 'http://127.0.0.1:8000/v1', "
                                          f"got {settings.base_url!r}")
        if settings.chat_model is not None:
            raise ConfigError("chat_model", "give either base_url (a server) or chat_model (a LangChain chat model), "
                                            "not both")
    elif settings.tokenizer is not None:
        raise ConfigError("tokenizer", "names a remote model's tokenizer and needs base_url; a local model brings "
                                       "its own")
    if settings.chat_model is not None and not isinstance(settings.chat_model, BaseChatModel):
        raise ConfigError("chat_model", f"must be a LangChain chat model (BaseChatModel), got "
                                        f"{type(settings.chat_model).__name__}")
    if settings.timeout is not None and not settings.timeout > 0:
        raise ConfigError("timeout", f"must be a number of seconds > 0, got {settings.timeout!r}")
    if settings.max_retries is not None and settings.max_retries < 0:
        raise ConfigError("max_retries", f"must be an integer >= 0, got {settings.max_retries!r}")


# --------------------------------------------------------------------------- per-call plan


@dataclass
class CallPlan:
    """Everything one generation needs, resolved from instance settings and per-call overrides."""

    model: str
    decided: Plan
    max_new_tokens: int
    stop: list[str] | None
    seed: int | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))
    max_tokens_given: bool = False  # set on the instance or the call (not the default budget)
    temperature: float | None = None  # as given on the instance or the call

    def request(self, lm: Any, prompt: Any, *, cancel: CancelToken | None = None, **kwargs: Any) -> Request:
        """The core :class:`Request` for ``prompt`` on the loaded model ``lm`` (validated again, cheaply)."""
        return Request.build(lm, prompt, max_new_tokens=self.max_new_tokens, stop=self.stop, seed=self.seed,
                             decided=self.decided, cancel=cancel, **kwargs)


def check_call(settings: DeALSettings, overrides: Mapping[str, Any], *, stop: list[str] | None) -> CallPlan:
    """:func:`plan_call` with every check that is possible before the route is known (no network, no model).

    A local model gets them all; a ``chat_model`` gets the chat-only checks (a strategy it cannot run,
    best-of-n's parameters); a ``base_url`` gets the plan's own checks here and the rest once the server
    has said whether it offers completions.
    """
    if settings.chat_model is not None:
        from langchain_deal._backends import chat_model_reason, check_chat_plan

        call = plan_call(settings, overrides, stop=stop, check=False)
        check_chat_plan(call.decided, chat_model_reason(settings.chat_model), tools=call.tools,
                        temperature=call.temperature,
                        max_new_tokens=call.max_new_tokens, stop=call.stop, seed=call.seed)
        return call
    return plan_call(settings, overrides, stop=stop, check=settings.base_url is None)


def plan_call(settings: DeALSettings, overrides: Mapping[str, Any], *, stop: list[str] | None,
              check: bool = True) -> CallPlan:
    """Merges per-call overrides into the instance settings and validates the result (no model work).

    Per-call values replace the instance's; policy, reward, strategy and parameters combine by
    :func:`shared_core.request.plan`'s rules (``None`` means "not given"; a reward alone selects the
    strategy that moves it). Keywords that are not call settings are strategy parameters. ``check=False``
    leaves the strategy's parameters unchecked (the route may still change the strategy).
    """
    overrides = {k: v for k, v in overrides.items() if k not in _DROPPED_CALL_KEYS}
    loose = {k: v for k, v in overrides.items() if k not in CALL_KEYS}
    call_policy = overrides.get("policy")
    temperature = overrides.get("temperature", settings.temperature)
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or temperature < 0):
        raise ConfigError("temperature", f"must be a number >= 0, got {temperature!r}")
    decided = plan(
        policy=call_policy if call_policy is not None else settings.policy,
        strategy=overrides.get("strategy") or settings.strategy,
        reward=overrides.get("reward"), instance_reward=settings.reward, policy_from_call=call_policy is not None,
        param_layers=[settings.strategy_params, overrides.get("strategy_params") or {}, loose],
        sample=bool(temperature),
    )
    if temperature is not None and "temperature" in get_strategy(decided.strategy).Params.model_fields:
        decided = dataclasses.replace(decided, params={"temperature": float(temperature), **decided.params})
    max_tokens = overrides.get("max_tokens", settings.max_tokens)
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_tokens is None else max_tokens
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ConfigError("max_tokens", f"must be a positive integer, got {max_tokens!r}")
    seed = overrides.get("seed", settings.seed)
    stops = stop if stop is not None else settings.stop
    tools = normalize_tools(overrides.get("tools"))
    choice = resolve_tool_choice(overrides.get("tool_choice"), tools)
    model = overrides.get("model") or settings.model
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("model", f"must be a model alias, a path or a hub id, got {model!r}")
    call = CallPlan(model=model, decided=decided, max_new_tokens=max_new_tokens,
                    stop=list(stops) if stops else None, seed=seed, tools=tools, choice=choice,
                    max_tokens_given=max_tokens is not None,
                    temperature=None if temperature is None else float(temperature))
    if check:
        call.request(None, "check")  # every remaining check (parameters, seed, stop strings), no model work
    return call


# --------------------------------------------------------------------------- results -> metadata


def usage_metadata(result: GenerationResult) -> dict[str, int]:
    """LangChain ``UsageMetadata`` from a result's stats."""
    prompt, new = result.stats.prompt_tokens, result.stats.new_tokens
    return {"input_tokens": prompt, "output_tokens": new, "total_tokens": prompt + new}


def response_metadata(result: GenerationResult, request: Request, *, model_name: str) -> dict[str, Any]:
    """``response_metadata``: LangChain's standard keys plus the core's report (docs/metadata.md)."""
    return {"model_name": model_name, "model_provider": PROVIDER, **report(result, request)}


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

_STREAMS = itertools.count(1)


async def iterate_in_thread(factory: Callable[[], Iterator[T]], cancel: CancelToken | None = None) -> AsyncIterator[T]:
    """Runs a blocking iterator in its own worker thread, so the event loop keeps serving other tasks.

    Every step (creating the iterator, each ``next()``, the final ``close()``) runs on one dedicated
    thread, in order, so the iterator is never touched by two threads at once. If the consumer stops
    early or its task is cancelled, ``cancel`` is set at once (decoding stops before its next forward
    pass) and the iterator is closed on its thread after the step in flight; the ``CancelledError``
    propagates unchanged.
    """
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"deal-stream-{next(_STREAMS)}")
    iterator: Iterator[T] | None = None
    done = object()
    try:
        iterator = await loop.run_in_executor(worker, factory)
        while True:
            item = await loop.run_in_executor(worker, next, iterator, done)
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        if cancel is not None:
            cancel.cancel()
        close = getattr(iterator, "close", None)
        if close is not None:
            worker.submit(close)
        worker.shutdown(wait=False)


def dumps_args(arguments: Mapping[str, Any]) -> str:
    """Tool arguments as the JSON string ``tool_call_chunks`` carry."""
    return json.dumps(dict(arguments), ensure_ascii=False)
