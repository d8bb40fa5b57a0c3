"""Where a ``DeAL`` call's answer comes from, and the chat-only path (URIAL plus best-of-n reranking).

Three routes, decided per call from the instance's settings:

- ``local``: the model loads in process; every strategy runs.
- ``remote``: ``base_url`` names an OpenAI-compatible server with ``/v1/completions``
  (``shared_core.connect_model``); the core runs the strategies that server's capabilities allow.
- ``chat``: a chat-only model, either ``chat_model=`` (any LlamaIndex LLM) or a ``base_url`` whose
  server has no completions endpoint (asked of the server:
  :func:`shared_core.backends.endpoint.connect_endpoint`). There are no
  logits, so alignment is the URIAL prompt and, with a reward, best-of-n reranking of whole answers
  (:func:`shared_core.request.plan_chat_only`), run by :class:`~llamaindex_deal.urial.URIALLLM`.
  The report's ``path`` and ``reason`` say so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.llms.types import ChatResponse
from llama_index.core.llms.llm import LLM

from shared_core.backends.endpoint import connect_endpoint
from shared_core.decoding.urial_mode import parse_urial_option
from shared_core.errors import ConfigError
from shared_core.request import ChatOnlyPlan, Plan, Request, plan_chat_only, report, request_text
from shared_core.result import GenerationResult, GenerationStats, RewardScore
from shared_core.rewards.runtime import final_score

#: Why the chat path runs, per source (the report's ``reason``).
REASON_CHAT_MODEL = "{name} is a chat model: it returns whole answers, no completions/logprobs"
REASON_ENDPOINT = "the endpoint has no completions/logprobs"

@dataclass(frozen=True)
class Route:
    """One call's route: ``lm`` (a RemoteModel; ``None`` for a local model) or ``chat`` for the URIAL path."""

    path: str  # "local", "remote" or "chat"
    name: str
    lm: Any = None
    chat: LLM | None = None
    reason: str | None = None
    owned: bool = False  # the chat client was built here (for a chat-only base_url), not given by the user


def chat_model_reason(llm: Any) -> str:
    """The report's ``reason`` for a ``chat_model``."""
    return REASON_CHAT_MODEL.format(name=type(llm).__name__)


def check_backend_settings(base_url: Any, chat_model: Any, tokenizer: Any, timeout: Any, max_retries: Any) -> None:
    """Checks ``base_url``, ``chat_model``, ``tokenizer``, ``timeout`` and ``max_retries`` (no network)."""
    if base_url is not None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"must be an http(s) URL such as 'http://127.0.0.1:8000/v1', "
                                          f"got {base_url!r}")
        if chat_model is not None:
            raise ConfigError("chat_model", "give either base_url (a server) or chat_model (a LlamaIndex LLM), "
                                            "not both")
    elif tokenizer is not None:
        raise ConfigError("tokenizer", "names a remote model's tokenizer and needs base_url; a local model brings its "
                                       "own")
    if chat_model is not None and not isinstance(chat_model, LLM):
        raise ConfigError("chat_model", f"must be a LlamaIndex LLM, got {type(chat_model).__name__}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ConfigError("timeout", f"must be a number of seconds > 0, got {timeout!r}")
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                    or max_retries < 0):
        raise ConfigError("max_retries", f"must be an integer >= 0, got {max_retries!r}")


def openai_like(url: str, model: str, api_key: str | None, timeout: float | None, max_retries: int | None,
                context_window: int | None) -> LLM:
    """An ``OpenAILike`` chat client for a chat-only OpenAI-compatible endpoint."""
    try:
        from llama_index.llms.openai_like import OpenAILike
    except ImportError as exc:
        raise ConfigError("base_url", f"{url} serves chat only; its client needs the llama-index-llms-openai-like "
                                      "package (pip install llama-index-llms-openai-like)") from exc
    options: dict[str, Any] = {"api_base": url, "model": model, "api_key": api_key or "EMPTY", "is_chat_model": True,
                               "is_function_calling_model": False}
    if timeout is not None:
        options["timeout"] = timeout
    if max_retries is not None:
        options["max_retries"] = max_retries
    if context_window is not None:
        options["context_window"] = context_window
    return OpenAILike(**options)


def route(*, model: str, base_url: str | None, served: str | None, api_key: str | None, tokenizer: str | None,
          chat_model: Any, timeout: float | None, max_retries: int | None, context_window: int | None) -> Route:
    """The route of one call; ``served`` is the model id to ask a server for (``None``: its only one)."""
    if chat_model is not None:
        return Route(path="chat", name=llm_name(chat_model), chat=chat_model, reason=chat_model_reason(chat_model))
    if base_url:
        endpoint = connect_endpoint(base_url, model=served, api_key=api_key, tokenizer=tokenizer, timeout=timeout,
                                    max_retries=max_retries)
        if endpoint.chat_only:
            chat = openai_like(endpoint.chat_base_url, endpoint.name, api_key, timeout, max_retries, context_window)
            return Route(path="chat", name=endpoint.name, chat=chat, reason=REASON_ENDPOINT, owned=True)
        return Route(path="remote", name=endpoint.name, lm=endpoint.remote)
    return Route(path="local", name=model)


def llm_name(llm: Any) -> str:
    """An LLM's model name as its metadata gives it, else its class name."""
    try:
        name = llm.metadata.model_name
    except Exception:  # noqa: BLE001 - metadata is informational; any LLM may compute it lazily
        name = None
    return name if isinstance(name, str) and name and name != "unknown" else type(llm).__name__


# --------------------------------------------------------------------------- the chat path


def check_chat_plan(decided: Plan, reason: str, *, max_new_tokens: int, stop: list[str] | None, seed: int | None,
                    prompt: Any = "check", name: str = "chat") -> tuple[ChatOnlyPlan, Request]:
    """The chat-only plan of a call and its validated request.

    Raises:
        ConfigError: a strategy that needs logits, named explicitly; best-of-n parameters, a missing
            reward for an explicit ``best_of_n``, bad limits.
    """
    fitted = plan_chat_only(decided, reason)
    request = Request.build(name, prompt, decided=fitted.decided, max_new_tokens=max_new_tokens, stop=stop, seed=seed)
    return fitted, request


@dataclass
class ChatOutcome:
    """The chat path's answer: the chosen text, its report, and ``raw`` (all answers, usage)."""

    text: str
    summary: dict[str, Any]
    raw: dict[str, Any]


def sample_settings(route: Route, fitted: ChatOnlyPlan, max_tokens: int | None) -> dict[str, Any]:
    """The fields set on a copy of the chat LLM for this call, among those it has.

    An LLM the user configured keeps its own settings unless the call sets them: the token budget
    when given on DeAL or per call; the temperature when given, or when best-of-n needs sampling from
    an LLM set to greedy (none or 0; best_of_n's default then applies). A client built here for a
    chat-only ``base_url`` gets the plan's values (greedy is temperature 0).
    """
    assert route.chat is not None
    fields = getattr(type(route.chat), "model_fields", {})
    update: dict[str, Any] = {}
    temperature = fitted.temperature
    if temperature is None and route.owned:
        temperature = 0.0
    wanted = route.owned or "temperature" in fitted.decided.params or (
        fitted.n > 1 and not getattr(route.chat, "temperature", None))
    if temperature is not None and wanted and "temperature" in fields:
        update["temperature"] = temperature
    if max_tokens is not None:
        update.update({k: max_tokens for k in ("max_tokens", "max_new_tokens") if k in fields})
    return update


def _usage(response: ChatResponse | None) -> tuple[int, int]:
    """``(prompt tokens, completion tokens)`` a chat response reports, where it does."""
    if response is None:
        return 0, 0
    raw = response.raw
    usage = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
    if usage is None:
        return 0, 0

    def read(key: str) -> int:
        value = usage.get(key) if isinstance(usage, Mapping) else getattr(usage, key, None)
        return int(value or 0)

    return read("prompt_tokens"), read("completion_tokens")


def _finish_reason(response: ChatResponse | None) -> str:
    raw = None if response is None else response.raw
    reason: Any = None
    if isinstance(raw, Mapping):
        reason = raw.get("finish_reason")
    else:
        choices = getattr(raw, "choices", None) or []
        reason = getattr(choices[0], "finish_reason", None) if choices else None
    if reason in ("length", "max_tokens"):
        return "length"
    return str(reason) if reason in ("eos", "stop", "cancelled") else "eos"


def run_chat(route: Route, decided: Plan, conversation: Any, *, max_new_tokens: int, stop: list[str] | None,
             seed: int | None, urial: Any = False, max_tokens_given: bool = False) -> ChatOutcome:
    """Answers ``conversation`` (a query string or engine messages) on a chat-only LLM.

    ``n`` answers are drawn (:meth:`URIALLLM.draw`: one request with ``n`` choices where the client
    supports it), scored with the reward in this process, and the best (the first of equals) is
    returned; one answer without a reward. ``urial`` (the instance's option) picks the examples.
    """
    from llamaindex_deal.urial import URIALLLM

    assert route.chat is not None and route.reason is not None
    if not isinstance(conversation, str):
        for i, message in enumerate(conversation):
            if message["role"] == "tool" or message.get("tool_calls"):
                raise ConfigError(f"messages[{i}]", "a chat-only model answers through the URIAL prompt, which "
                                                    "cannot carry tool calls; send plain turns")
        conversation = [{"role": m["role"], "content": m["content"]} for m in conversation]
    fitted, request = check_chat_plan(decided, route.reason, max_new_tokens=max_new_tokens, stop=stop, seed=seed,
                                      prompt=conversation, name=route.name)
    options = parse_urial_option(urial) or parse_urial_option(True)
    assert options is not None
    update = sample_settings(route, fitted, max_new_tokens if max_tokens_given or route.owned else None)
    inner = route.chat.model_copy(update=update) if update else route.chat
    wrapper = URIALLLM(llm=inner, mode="chat", n=fitted.n, reward=request.reward if fitted.n > 1 else None,
                       variant=options.variant, examples=None if options.examples is None else list(options.examples),
                       preamble=options.preamble, sample_kwargs={} if seed is None else {"seed": seed})
    stats = GenerationStats()
    started = time.perf_counter()
    answers, responses, requests = wrapper.draw(conversation, {})
    text, urial_report = wrapper._choose(request_text(request.prompts[0]), answers, stats)
    chosen = int(urial_report.get("chosen", 0))
    urial_report["requests"] = requests
    urial_report["sample_settings"] = update
    prompt_tokens, new_tokens = _usage(responses[chosen])
    stats.prompt_tokens, stats.new_tokens = prompt_tokens, new_tokens
    scores = urial_report.get("scores") or None
    stats.extra.update({"planned": fitted.decided.chosen_by, "planned_strategy": fitted.planned,
                        "samples": len(answers), "sample_scores": scores, "chosen": chosen, "requests": requests,
                        "sample_tokens": sum(_usage(r)[1] for r in responses)})
    reward: RewardScore | None = None
    error: str | None = None
    if request.reward is not None:
        reward, error = final_score(request.reward, text, prompt=request_text(request.prompts[0]), stats=stats)
    stats.seconds = time.perf_counter() - started
    finish: Any = _finish_reason(responses[chosen])
    result = GenerationResult(text=text, token_ids=[], finish_reason=finish, reward=reward, stats=stats,
                              strategy=fitted.decided.strategy, model=route.name, reward_error=error)
    summary = {**report(result, request), "path": fitted.path, "reason": fitted.reason, "urial": urial_report}
    raw = {**result.to_dict(), "policy": request.plan.policy, "answers": answers,
           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                     "total_tokens": prompt_tokens + new_tokens}}
    return ChatOutcome(text=text, summary=summary, raw=raw)
