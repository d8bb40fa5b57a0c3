"""Where a ChatDeAL / DeALLLM call's answer comes from, and the chat-only path (URIAL plus best-of-n reranking).

Three routes, decided per call from the instance's settings:

- ``local``: the model loads in process (``load_model``); every strategy runs.
- ``remote``: ``base_url`` names an OpenAI-compatible server with ``/v1/completions``
  (``shared_core.connect_model``); the core runs the strategies that server's capabilities allow.
- ``chat``: a chat-only model, either ``chat_model=`` (any LangChain chat model) or a ``base_url``
  whose server has no completions endpoint (asked of the server:
  :func:`shared_core.backends.endpoint.connect_endpoint`). There are no logits, so alignment is the URIAL prompt and, with a reward, best-of-n
  reranking of whole answers (:func:`shared_core.request.plan_chat_only`), run by
  :class:`~langchain_deal.urial.URIALChatModel`. The metadata's ``path`` and ``reason`` say so.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from pydantic import SecretStr

from shared_core.backends.endpoint import connect_endpoint
from shared_core.errors import ConfigError
from shared_core.models import load_model
from shared_core.request import ChatOnlyPlan, Plan, Request, plan_chat_only, report, request_text
from shared_core.result import GenerationResult, GenerationStats, RewardScore
from shared_core.rewards.runtime import final_score

#: Why the chat path runs, per source (the metadata's ``reason``).
REASON_CHAT_MODEL = "{name} is a chat model: it returns whole answers, no completions/logprobs"
REASON_ENDPOINT = "the endpoint has no completions/logprobs"

@dataclass(frozen=True)
class Route:
    """One call's route: ``lm`` (a LocalModel or RemoteModel) for the core, or ``chat`` for the URIAL path."""

    path: str  # "local", "remote" or "chat"
    name: str
    lm: Any = None
    chat: BaseChatModel | None = None
    reason: str | None = None
    owned: bool = False  # the chat client was built here (for a chat-only base_url), not given by the user


def secret(value: Any) -> str | None:
    """The plain text of an API key given as a str or a SecretStr."""
    if value is None:
        return None
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def openai_chat(base_url: str, model: str, api_key: str | None, timeout: float | None,
                max_retries: int | None) -> BaseChatModel:
    """A ``ChatOpenAI`` client for a chat-only OpenAI-compatible endpoint."""
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as exc:
        raise ConfigError("base_url", f"{base_url} serves chat only; its client needs the langchain-openai "
                                      "package (pip install langchain-openai)") from exc
    options: dict[str, Any] = {"base_url": base_url, "model": model, "api_key": api_key or "EMPTY"}
    if timeout is not None:
        options["timeout"] = timeout
    if max_retries is not None:
        options["max_retries"] = max_retries
    return ChatOpenAI(**options)


def route(settings: Any, model: str) -> Route:
    """The route of one call on ``settings`` (a ChatDeAL or DeALLLM); ``model`` is the call's model."""
    if settings.chat_model is not None:
        inner = settings.chat_model
        return Route(path="chat", name=chat_model_name(inner), chat=inner, reason=chat_model_reason(inner))
    if settings.base_url:
        served = model if "model" in settings.model_fields_set or model != settings.model else None
        key = secret(settings.api_key)
        endpoint = connect_endpoint(settings.base_url, model=served, api_key=key, tokenizer=settings.tokenizer,
                                    timeout=settings.timeout, max_retries=settings.max_retries)
        if endpoint.chat_only:
            chat = openai_chat(endpoint.chat_base_url, endpoint.name, key, settings.timeout, settings.max_retries)
            return Route(path="chat", name=endpoint.name, chat=chat, reason=REASON_ENDPOINT, owned=True)
        return Route(path="remote", name=endpoint.name, lm=endpoint.remote)
    return Route(path="local", name=model, lm=load_model(model, device=settings.device))


def chat_model_name(chat: BaseChatModel) -> str:
    """A chat model's name as its own fields give it (``model_name``, ``model``), else its type."""
    for attr in ("model_name", "model", "model_id"):
        value = getattr(chat, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(chat).__name__


# --------------------------------------------------------------------------- the chat path


def chat_model_reason(chat: BaseChatModel) -> str:
    """The metadata's ``reason`` for a ``chat_model``."""
    return REASON_CHAT_MODEL.format(name=type(chat).__name__)


def check_chat_plan(decided: Plan, reason: str, *, tools: Any, max_new_tokens: int, stop: list[str] | None,
                    seed: int | None, messages: Any = "check", name: str = "chat",
                    temperature: float | None = None) -> tuple[ChatOnlyPlan, Request]:
    """The chat-only plan of a call and its validated request (tools cannot ride on the URIAL prompt).

    ``temperature`` (ChatDeAL's, or the call's) is the samples' temperature even when the planned
    strategy has none (a keywords reward plans ``deal``, which best-of-n replaces here).

    Raises:
        ConfigError: tools; a strategy that needs logits, named explicitly; best-of-n parameters, a
            missing reward for an explicit ``best_of_n``, bad limits.
    """
    if tools:
        raise ConfigError("tools", "a chat-only model answers through the URIAL prompt, which cannot carry tools; "
                                   "bind the tools to the chat model itself")
    if temperature is not None and decided.strategy != "greedy" and "temperature" not in decided.params:
        decided = dataclasses.replace(decided, params={**decided.params, "temperature": temperature})
    fitted = plan_chat_only(decided, reason)
    request = Request.build(name, messages, decided=fitted.decided, max_new_tokens=max_new_tokens, stop=stop,
                            seed=seed)
    return fitted, request


def sample_kwargs(route: Route, fitted: ChatOnlyPlan, max_tokens: int | None, seed: int | None) -> dict[str, Any]:
    """Keyword arguments for each sample, where the chat model has the field.

    A chat model the user configured keeps its own settings unless the call sets them: ``max_tokens``
    when given on ChatDeAL or per call; the temperature when given, or when best-of-n needs sampling
    from a model set to greedy (none or 0; best_of_n's default then applies). A client built here for
    a chat-only ``base_url`` gets the plan's values (greedy is temperature 0).
    """
    assert route.chat is not None
    chat = route.chat
    fields = getattr(type(chat), "model_fields", {})
    kwargs: dict[str, Any] = {}
    temperature = fitted.temperature
    if temperature is None and route.owned:
        temperature = 0.0
    wanted = route.owned or "temperature" in fitted.decided.params or (
        fitted.n > 1 and not getattr(chat, "temperature", None))
    if temperature is not None and wanted and "temperature" in fields:
        kwargs["temperature"] = temperature
    if max_tokens is not None and "max_tokens" in fields:
        kwargs["max_tokens"] = max_tokens
    if seed is not None and "seed" in fields:
        kwargs["seed"] = seed
    return kwargs


def chat_finish_reason(message: AIMessage) -> str:
    """The core's finish reason for a chat model's answer (OpenAI's ``length`` is the token budget)."""
    metadata = message.response_metadata or {}
    raw = metadata.get("finish_reason") or metadata.get("stop_reason")
    if raw in ("length", "max_tokens"):
        return "length"
    if raw in ("eos", "stop", "cancelled"):
        return str(raw)
    return "eos"


@dataclass
class ChatAnswer:
    """The chat path's answer: the chosen text, its report, and the chosen raw message (for usage)."""

    text: str
    summary: dict[str, Any]
    message: AIMessage


def run_chat(route: Route, decided: Plan, messages: list[BaseMessage], *, max_new_tokens: int,
             stop: list[str] | None, seed: int | None, tools: Any = None,
             max_tokens_given: bool = False, temperature: float | None = None) -> Iterator[str | ChatAnswer]:
    """Answers ``messages`` on a chat-only model; yields text deltas, then one :class:`ChatAnswer`.

    One answer (no reward, or ``n == 1``) streams through the chat model as it comes; ``n`` answers
    are drawn (:meth:`URIALChatModel.draw`), scored with the reward locally, and the best (the first
    of equals) comes as one piece. Every check runs before the chat model is called.
    """
    from langchain_deal._utils import to_chat_dicts
    from langchain_deal.urial import URIALChatModel

    assert route.chat is not None and route.reason is not None
    converted = to_chat_dicts(messages)
    fitted, request = check_chat_plan(decided, route.reason, tools=tools, max_new_tokens=max_new_tokens, stop=stop,
                                      seed=seed, messages=converted, name=route.name, temperature=temperature)
    wrapper = URIALChatModel(llm=route.chat, n=fitted.n, reward=request.reward if fitted.n > 1 else None)
    budget = max_new_tokens if max_tokens_given or route.owned else None
    kwargs = sample_kwargs(route, fitted, budget, seed)
    stats = GenerationStats()
    started = time.perf_counter()
    if fitted.n == 1:
        streamed: AIMessageChunk | None = None
        for part in wrapper.stream(messages, stop=stop, **kwargs):
            assert isinstance(part, AIMessageChunk)
            streamed = part if streamed is None else streamed + part
            if part.text:
                yield part.text
        assert streamed is not None
        samples: list[AIMessage] = [AIMessage(content=streamed.text, response_metadata=streamed.response_metadata,
                                              usage_metadata=streamed.usage_metadata)]
        texts, scores, chosen, requests = [streamed.text], None, 0, 1
    else:
        samples, requests = wrapper.draw(messages, stop, **kwargs)
        if not samples:
            raise ConfigError("chat_model", f"{type(route.chat).__name__} returned no answer")
        texts = [wrapper._clean(s.text) for s in samples]
        scores, chosen = wrapper._rerank(texts, messages, stats)
    urial = {**wrapper._report(texts, scores, chosen), "requests": requests, "sample_kwargs": kwargs}
    spent = [dict(s.usage_metadata or {}) for s in samples]
    stats.prompt_tokens = int(spent[chosen].get("input_tokens", 0) or 0)
    stats.new_tokens = int(spent[chosen].get("output_tokens", 0) or 0)
    stats.extra.update({"planned": fitted.decided.chosen_by, "planned_strategy": fitted.planned,
                        "samples": len(texts), "sample_scores": scores, "chosen": chosen, "requests": requests,
                        "sample_tokens": sum(int(u.get("output_tokens", 0) or 0) for u in spent)})
    reward: RewardScore | None = None
    error: str | None = None
    if request.reward is not None:
        reward, error = final_score(request.reward, texts[chosen], prompt=request_text(converted), stats=stats)
    stats.seconds = time.perf_counter() - started
    best = samples[chosen]
    finish: Any = chat_finish_reason(best)
    result = GenerationResult(text=texts[chosen], token_ids=[], finish_reason=finish, reward=reward, stats=stats,
                              strategy=fitted.decided.strategy, model=route.name, reward_error=error)
    summary = {**report(result, request), "path": fitted.path, "reason": fitted.reason, "urial": urial}
    if fitted.n > 1:
        yield texts[chosen]
    yield ChatAnswer(text=texts[chosen], summary=summary, message=best)
