"""``DeAL``: a LlamaIndex LLM that decodes a local Hugging Face model with reward-guided strategies.

It is a native ``FunctionCallingLLM`` (like ``llama_index.llms.ollama.Ollama``), so it works as
``Settings.llm``, in query engines, chat engines, ``FunctionAgent`` and ``structured_predict``. Decoding
goes through :mod:`shared_core`: a strategy (greedy, sample, or a reward-guided one) steered by a reward
(a spec, a policy name, a function). Query engines and agents call the LLM without extra arguments,
so the policy of an engine or an agent lives on the instance; direct calls may override it per call.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from llamaindex_deal import _tracking
from llamaindex_deal._backends import (
    ChatOutcome,
    Route,
    chat_model_reason,
    check_backend_settings,
    check_chat_plan,
    run_chat,
)
from llamaindex_deal._backends import route as choose_route
from llamaindex_deal._utils import (
    DecodeSettings,
    model_facts,
    plan_call,
    raw_payload,
    to_engine_messages,
)
from shared_core.cancel import CancelToken
from shared_core.decoding import GenerationStream, run
from shared_core.decoding.tool_call import forced_call_params
from shared_core.errors import ConfigError
from shared_core.models import DEFAULT_MODEL, load_model
from shared_core.request import DEFAULT_MAX_NEW_TOKENS, Plan, Request, report
from shared_core.result import GenerationResult
from shared_core.tools import (
    ToolChoice,
    normalize_tools,
    parse_tool_calls,
    prepare_tool_prompt,
    resolve_tool_choice,
    streamable_length,
)

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

T = TypeVar("T")
_END = object()


class DeAL(FunctionCallingLLM, CustomLLM):
    """Reward-guided decoding of a local model as a LlamaIndex LLM (chat, completion, tools, async).

    Args:
        model: an embedded alias (``"smollm2"``, the default), a local Hugging Face folder, a ``.gguf``
            file, or a hub id. Weights load once per process, on first use.
        max_new_tokens: the most tokens per answer.
        strategy: a decoding strategy (``shared_core.list_strategies()``); default: the policy's, else a
            reward-guided one when a reward is set (the one that moves it: ``deal`` for keywords and length
            budgets, ``args`` for a classifier, ``best_of_n`` for safety), else ``"greedy"``. With ``"greedy"`` a
            reward is only measured and reported.
        reward: what to steer towards: a reward spec (dict or JSON), a policy name, a function
            ``texts -> scores`` or a ``Reward``.
        policy: a registered policy name (a reward plus, optionally, a strategy and its params), or a
            policy dict. ``reward``/``strategy`` given alongside override the policy's.
        strategy_params: the strategy's own parameters (e.g. ``{"temperature": 0.7}`` for ``"sample"``).
        urial: align with the URIAL in-context prompt instead of the chat template (for base models):
            ``True`` (the "safe" examples), ``"help"``, or ``{"variant", "examples", "preamble"}``. The
            preamble's KV cache is computed once per model and reused.
        base_url: an OpenAI-compatible server. With ``/v1/completions`` (vLLM, SGLang, llama.cpp,
            ``deal serve``) the strategies run against it (``model`` is the served id, default: its
            only model; ``tokenizer`` names its tokenizer when the server has no ``/tokenize``). A
            chat-only endpoint (detected: no ``/v1/completions``) takes the chat path.
        api_key, timeout, max_retries: the server's key and request limits.
        chat_model: any LlamaIndex LLM (``OpenAILike(...)``, ...). Chat path: the URIAL prompt (``urial``
            picks the examples), and with a reward ``n`` answers reranked by it locally (best-of-n;
            OpenAI-compatible clients are asked once for ``n`` choices). The report's ``path`` is
            ``"urial+best_of_n"`` or ``"urial"`` and ``reason`` says why; a strategy that needs logits,
            named explicitly, is a ``ConfigError``; tools need a local model or a completions server.

    Per-call keyword arguments of ``complete``/``chat`` (and their stream and async forms) override
    the instance: ``policy``, ``reward``, ``strategy``, ``strategy_params``, ``max_new_tokens``,
    ``stop``, ``seed``, ``urial``; any other keyword is a strategy parameter. A call's ``policy``
    brings its own reward; a call's ``reward`` keeps the policy's strategy. Every response carries the alignment
    report in ``additional_kwargs`` (``model``, ``policy``, ``strategy``, ``reward`` as
    ``{"total", "components"}``, ``finish_reason``, ``stats``) and the full result in ``raw``. Query
    engine answers list the reports of their LLM calls in ``response.metadata["deal"]``.

    Example:
        >>> from llama_index.core import Settings
        >>> from llamaindex_deal import DeAL
        >>> Settings.llm = DeAL(model="smollm2", max_new_tokens=64, policy="concise")  # doctest: +SKIP
        >>> r = Settings.llm.complete("Give me two tips for staying safe online.")      # doctest: +SKIP
        >>> r.additional_kwargs["reward"], r.additional_kwargs["policy"]                # doctest: +SKIP
    """

    model: str = Field(default=DEFAULT_MODEL, description="Embedded alias, model folder, .gguf file or hub id.")
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, description="The most tokens per answer.")
    strategy: str | None = Field(default=None, description="Decoding strategy; default from the policy/reward.")
    reward: Any = Field(default=None, description="Reward spec, policy name, function or Reward.")
    policy: Any = Field(default=None, description="Registered policy name or policy dict.")
    strategy_params: dict[str, Any] = Field(default_factory=dict, description="The strategy's own parameters.")
    stop: list[str] | None = Field(default=None, description="Stop strings (not included in the answer).")
    seed: int | None = Field(default=None, description="Seed for sampling strategies.")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: str = Field(default="auto", description="'auto', 'float32', 'bfloat16' or 'float16'.")
    context_window: int | None = Field(default=None, description="Override of the model's context window.")
    urial: Any = Field(default=False, description="URIAL in-context alignment: True, 'help' or an options dict.")
    base_url: str | None = Field(
        default=None, description="An OpenAI-compatible server (vLLM, SGLang, llama.cpp, a chat API); `model` is then "
                                  "the served model's id (default: the server's only model).")
    api_key: str | None = Field(default=None, exclude=True, repr=False, description="The server's API key.")
    tokenizer: str | None = Field(
        default=None, description="Tokenizer (folder or hub id) of the served model when the server does not say.")
    chat_model: Any = Field(
        default=None, exclude=True,
        description="Any LlamaIndex LLM to align through URIAL (+ best-of-n with a reward).")
    timeout: float | None = Field(default=None, description="Seconds per server request (with base_url).")
    max_retries: int | None = Field(default=None, description="Retries per server request (with base_url).")

    def __init__(self, **kwargs: Any) -> None:
        fields = type(self).model_fields
        known = set(fields) | {f.alias for f in fields.values() if f.alias}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(unknown[0], "not a field of DeAL; a strategy's own parameters go in strategy_params "
                                          f"(e.g. strategy_params={{{unknown[0]!r}: ...}}); fields: "
                                          + ", ".join(sorted(f for f in fields if not f.startswith("_"))))
        super().__init__(**kwargs)
        self._check()
        _tracking.install()

    def _check(self) -> None:
        """Checks everything a user can get wrong in the instance's settings, before any model work.

        With ``base_url`` the strategy's parameters are checked on the first call, once the server has
        said whether it offers completions (a chat-only server changes what can run).
        """
        check_backend_settings(self.base_url, self.chat_model, self.tokenizer, self.timeout, self.max_retries)
        self._check_settings(self._settings({}))
        if self.context_window is not None and (isinstance(self.context_window, bool) or self.context_window <= 0):
            raise ConfigError("context_window", f"must be a positive integer, got {self.context_window!r}")

    @classmethod
    def class_name(cls) -> str:
        return "DeAL"

    # ------------------------------------------------------------------ configuration

    def with_policy(self, policy: Any, **overrides: Any) -> DeAL:
        """A copy of this LLM that decodes with ``policy`` (for one query engine or agent).

        As with a per-call ``policy``, the policy brings its own reward (this instance's ``reward`` is
        dropped); ``overrides`` set other fields (e.g. ``strategy``). The copy shares the loaded weights.
        """
        copy = self.model_copy(update={"policy": policy, "reward": None, **overrides})
        copy._check()
        return copy

    def _settings(self, kwargs: dict[str, Any]) -> DecodeSettings:
        """This call's settings: the instance's, overridden by the call's keyword arguments (``plan_call``)."""
        instance = {"policy": self.policy, "reward": self.reward, "strategy": self.strategy,
                    "strategy_params": self.strategy_params, "max_new_tokens": self.max_new_tokens,
                    "stop": self.stop, "seed": self.seed, "urial": self.urial}
        return plan_call(instance, kwargs)

    def _check_settings(self, settings: DecodeSettings) -> None:
        """The checks possible before the route is known: all for a local model, the chat-only ones for a
        ``chat_model``, the plan's own for a ``base_url`` (no network, no model work)."""
        if self.chat_model is not None:
            check_chat_plan(settings.decided, chat_model_reason(self.chat_model),
                            max_new_tokens=settings.max_new_tokens, stop=settings.stop, seed=settings.seed)
        elif self.base_url is None:
            settings.request(None, "check")

    def _check_call(self, kwargs: dict[str, Any]) -> None:
        """Runs a call's checks (settings, tool arguments) without model work."""
        kwargs = dict(kwargs)
        tooling = _pop_tooling(kwargs)
        self._check_settings(self._settings(kwargs))
        if tooling.tools is not None or tooling.tool_choice is not None:
            resolve_tool_choice(tooling.tool_choice, normalize_tools(tooling.tools))

    def _route(self) -> Route:
        """Where this call's answer comes from: the local model, a completions server, or a chat-only model."""
        return choose_route(model=self.model, base_url=self.base_url,
                            served=self.model if "model" in self.model_fields_set else None, api_key=self.api_key,
                            tokenizer=self.tokenizer, chat_model=self.chat_model, timeout=self.timeout,
                            max_retries=self.max_retries, context_window=self.context_window)

    def _lm(self) -> Any:
        """The model tool calls decode on: the local model, or the server's handle."""
        if self.base_url is not None:
            route = self._route()
            if route.lm is None:
                raise ConfigError("tools", f"{route.reason}: tool calls need a model that can be constrained; "
                                           "bind tools to a local model or a completions server")
            return route.lm
        return load_model(self.model, device=self.device, dtype=self.dtype)

    @property
    def metadata(self) -> LLMMetadata:
        """Context window and chat support: from the model's files (no weights are loaded), the server, or
        the wrapped chat model."""
        if self.chat_model is not None or self.base_url is not None:
            return self._backend_metadata()
        facts = model_facts(self.model)
        return LLMMetadata(
            context_window=self.context_window or facts.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=facts.has_chat_template,
            is_function_calling_model=True,
            model_name=self.model,
        )

    def _backend_metadata(self) -> LLMMetadata:
        route = self._route()
        if route.lm is not None:
            return LLMMetadata(context_window=self.context_window or route.lm.context_window,
                               num_output=self.max_new_tokens, is_chat_model=route.lm.has_chat_template,
                               is_function_calling_model=True, model_name=route.name)
        assert route.chat is not None
        inner = route.chat.metadata
        return LLMMetadata(context_window=self.context_window or inner.context_window, num_output=self.max_new_tokens,
                           is_chat_model=True, is_function_calling_model=False, model_name=route.name)

    # ------------------------------------------------------------------ the chat-only path

    def _chat_only(self, route: Route, conversation: Any, settings: DecodeSettings,
                   collectors: tuple[_tracking.Collector, ...], kwargs: dict[str, Any]) -> ChatOutcome:
        given = kwargs.get("max_new_tokens") is not None or "max_new_tokens" in self.model_fields_set
        outcome = run_chat(route, settings.decided, conversation, max_new_tokens=settings.max_new_tokens,
                           stop=settings.stop, seed=settings.seed, urial=settings.urial, max_tokens_given=given)
        _tracking.record(collectors, outcome.summary)
        return outcome

    # ------------------------------------------------------------------ decoding

    def _completion_prompt(self, prompt: str, formatted: bool) -> tuple[Any, bool | None]:
        """A ``formatted`` prompt is sent as raw text; otherwise as a user message (chat template)."""
        if not isinstance(prompt, str):
            raise ConfigError("prompt", f"must be a string, got {type(prompt).__name__}")
        if formatted:
            return prompt, False
        if self.system_prompt:
            return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}], None
        return prompt, None

    def _complete_now(self, prompt: str, formatted: bool, kwargs: dict[str, Any],
                      collectors: tuple[_tracking.Collector, ...]) -> CompletionResponse:
        settings = self._settings(dict(kwargs))
        engine_prompt, chat = self._completion_prompt(prompt, formatted)
        route = self._route()
        if route.chat is not None:
            outcome = self._chat_only(route, engine_prompt, settings, collectors, kwargs)
            return CompletionResponse(text=outcome.text, raw=outcome.raw, additional_kwargs=outcome.summary)
        request = settings.request(self._model_arg(route), engine_prompt, chat=chat)
        result = run(request)
        assert isinstance(result, GenerationResult)
        return self._completion_response(result, request, settings, collectors)

    def _completion_response(self, result: GenerationResult, request: Request, settings: DecodeSettings,
                             collectors: tuple[_tracking.Collector, ...], *, delta: str | None = None,
                             text: str | None = None) -> CompletionResponse:
        summary = {**report(result, request), "path": _path_of(request), "reason": None}
        _tracking.record(collectors, summary)
        return CompletionResponse(text=result.text if text is None else text, delta=delta,
                                  raw=raw_payload(result, settings), additional_kwargs=summary)

    def _stream_complete_now(self, prompt: str, formatted: bool, kwargs: dict[str, Any],
                             collectors: tuple[_tracking.Collector, ...],
                             cancel: CancelToken | None = None) -> CompletionResponseGen:
        settings = self._settings(dict(kwargs))  # validates now, before any model work
        engine_prompt, chat = self._completion_prompt(prompt, formatted)
        route = self._route()
        if route.chat is not None:  # the answer is chosen among whole answers: one chunk
            outcome = self._chat_only(route, engine_prompt, settings, collectors, kwargs)

            def one() -> CompletionResponseGen:
                yield CompletionResponse(text=outcome.text, delta=outcome.text, raw=outcome.raw,
                                         additional_kwargs=outcome.summary)

            return one()
        request = settings.request(self._model_arg(route), engine_prompt, chat=chat, cancel=cancel)
        deltas = GenerationStream(request)

        def gen() -> CompletionResponseGen:
            text = ""
            for delta, last in _with_last(deltas):
                text += delta
                if not last:
                    yield CompletionResponse(text=text, delta=delta)
                else:
                    yield self._completion_response(deltas.result, request, settings, collectors, delta=delta,
                                                    text=text)

        return gen()

    def _model_arg(self, route: Route | None = None) -> Any:
        """The model to hand the engine: the server's handle, or the local model's name when device and
        dtype are the defaults.

        The engine then checks the request before it loads weights (the process-wide cache is shared).
        """
        if route is not None and route.lm is not None:
            return route.lm
        if self.device == "auto" and self.dtype == "auto":
            return self.model
        return self._lm()

    # ------------------------------------------------------------------ completion API

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Completes ``prompt`` (a user message for chat models; raw text when ``formatted``)."""
        return self._complete_now(prompt, formatted, kwargs, _tracking.open_collectors())

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Streams the same text as :meth:`complete`; the last chunk carries the report."""
        return self._stream_complete_now(prompt, formatted, kwargs, _tracking.open_collectors())

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self._complete_now, prompt, formatted, kwargs, _tracking.open_collectors())

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` with each step (checks and model loading too) in a worker thread."""
        self._check_call(kwargs)  # bad input fails here, not when the stream is first read
        collectors = _tracking.open_collectors()
        cancel = CancelToken()
        return _to_async(lambda: self._stream_complete_now(prompt, formatted, kwargs, collectors, cancel), cancel)

    # ------------------------------------------------------------------ chat API

    def _chat_now(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any],
                  collectors: tuple[_tracking.Collector, ...]) -> ChatResponse:
        kwargs = dict(kwargs)
        tooling = _pop_tooling(kwargs)
        settings = self._settings(kwargs)
        engine_messages = to_engine_messages(messages)
        route = self._route()
        if route.chat is not None:
            outcome = self._chat_only(route, _chat_turns(engine_messages, tooling), settings, collectors, kwargs)
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=outcome.text),
                                raw=outcome.raw, additional_kwargs=outcome.summary)
        if tooling.tools or _has_tool_history(engine_messages):
            return self._chat_with_tools_now(engine_messages, tooling, settings, collectors)
        request = settings.request(self._model_arg(route), engine_messages)
        result = run(request)
        assert isinstance(result, GenerationResult)
        return self._chat_response(result, request, settings, collectors, text=result.text)

    def _chat_response(self, result: GenerationResult, request: Request, settings: DecodeSettings,
                       collectors: tuple[_tracking.Collector, ...], *, text: str,
                       tool_calls: Sequence[ToolCallBlock] = (), delta: str | None = None) -> ChatResponse:
        summary = {**report(result, request), "path": _path_of(request), "reason": None}
        _tracking.record(collectors, summary)
        blocks: list[Any] = [TextBlock(text=text)] if text or not tool_calls else []
        blocks.extend(tool_calls)
        message = ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks)
        return ChatResponse(message=message, delta=delta, raw=raw_payload(result, settings),
                            additional_kwargs=summary)

    def _stream_chat_now(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any],
                         collectors: tuple[_tracking.Collector, ...],
                         cancel: CancelToken | None = None) -> ChatResponseGen:
        kwargs = dict(kwargs)
        tooling = _pop_tooling(kwargs)
        settings = self._settings(kwargs)
        engine_messages = to_engine_messages(messages)
        route = self._route()
        if route.chat is not None:  # the answer is chosen among whole answers: one chunk
            outcome = self._chat_only(route, _chat_turns(engine_messages, tooling), settings, collectors, kwargs)

            def one() -> ChatResponseGen:
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=outcome.text),
                                   delta=outcome.text, raw=outcome.raw, additional_kwargs=outcome.summary)

            return one()
        if tooling.tools or _has_tool_history(engine_messages):
            return self._stream_chat_with_tools_now(engine_messages, tooling, settings, collectors, cancel)
        request = settings.request(self._model_arg(route), engine_messages, cancel=cancel)
        deltas = GenerationStream(request)

        def gen() -> ChatResponseGen:
            text = ""
            for delta, last in _with_last(deltas):
                text += delta
                if not last:
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
                else:
                    yield self._chat_response(deltas.result, request, settings, collectors, text=text, delta=delta)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answers a conversation (tool results accepted); with ``tools=`` it may answer with tool calls."""
        return self._chat_now(messages, kwargs, _tracking.open_collectors())

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Streams the same message as :meth:`chat`; the last chunk carries tool calls and the report."""
        return self._stream_chat_now(messages, kwargs, _tracking.open_collectors())

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self._chat_now, messages, kwargs, _tracking.open_collectors())

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` with each step (checks, model loading, tool rendering too) in a worker thread."""
        self._check_call(kwargs)  # bad input fails here, not when the stream is first read
        collectors = _tracking.open_collectors()
        cancel = CancelToken()
        return _to_async(lambda: self._stream_chat_now(messages, kwargs, collectors, cancel), cancel)

    # ------------------------------------------------------------------ function calling

    def _tool_request(self, engine_messages: list[dict[str, Any]], tooling: _Tooling, settings: DecodeSettings,
                      cancel: CancelToken | None = None) -> tuple[Request, ToolChoice]:
        """Checks the tools and the request, then renders tools and tool history for the chat template.

        Templates without tool support get the fallback format of :mod:`shared_core.tools` (earlier
        calls as ``<tool_call>`` text, results as ``<tool_response>`` turns), also when this call
        passes no tools but the history holds calls and results.

        Returns the request and the resolved choice. A forced call (``tool_required`` or ``tool_choice``
        naming a tool) decodes with the ``"tool_call"`` strategy, which writes valid JSON for the tool's
        schema; a reward judges answers, not call syntax, so it is not applied to forced calls.
        """
        if settings.urial:
            raise ConfigError("urial", "URIAL prompts cannot carry tools or tool results; use urial=False here")
        tools = normalize_tools(tooling.tools)
        choice = resolve_tool_choice(tooling.tool_choice, tools)
        if tooling.tool_required and choice.mode == "auto":
            choice = ToolChoice("required", choice.names)
        if choice.forced:
            forced = Plan(strategy="tool_call", reward=None, params=forced_call_params(tools, choice),
                          policy=settings.policy, chosen_by="argument")
            settings = DecodeSettings(decided=forced, max_new_tokens=settings.max_new_tokens, stop=None,
                                      seed=settings.seed)
        settings.request(None, "check")
        lm = self._lm()
        prepared = prepare_tool_prompt(engine_messages, tools, tokenizer=lm.tokenizer, tool_choice=choice)
        return settings.request(lm, prepared.messages, tools=prepared.template_tools, cancel=cancel), choice

    def _chat_with_tools_now(self, engine_messages: list[dict[str, Any]], tooling: _Tooling,
                             settings: DecodeSettings, collectors: tuple[_tracking.Collector, ...]) -> ChatResponse:
        request, choice = self._tool_request(engine_messages, tooling, settings)
        result = run(request)
        assert isinstance(result, GenerationResult)
        text, calls = _split_calls(result.text, choice)
        return self._chat_response(result, request, settings, collectors, text=text, tool_calls=calls)

    def _stream_chat_with_tools_now(self, engine_messages: list[dict[str, Any]], tooling: _Tooling,
                                    settings: DecodeSettings, collectors: tuple[_tracking.Collector, ...],
                                    cancel: CancelToken | None = None) -> ChatResponseGen:
        """Streams plain text as it comes, holding back anything that may start a tool call.

        The last chunk carries the parsed tool calls and the report; a forced call streams no text.
        """
        request, choice = self._tool_request(engine_messages, tooling, settings, cancel)
        deltas = GenerationStream(request)

        def gen() -> ChatResponseGen:
            raw = ""
            shown = ""
            for delta in deltas:
                raw += delta
                visible = "" if choice.forced else raw[: streamable_length(raw)]
                if len(visible) > len(shown):
                    new, shown = visible[len(shown):], visible
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=shown), delta=new)
            text, calls = _split_calls(raw, choice)
            last = text[len(shown):] if text.startswith(shown) else ""
            yield self._chat_response(deltas.result, request, settings, collectors, text=text, tool_calls=calls,
                                      delta=last)

        return gen()

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments for a tool-calling turn: messages, OpenAI tool schemas, forcing."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        schemas = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        return {"messages": messages, "tools": schemas or None, "tool_required": tool_required,
                "tool_choice": tool_choice, "allow_parallel_tool_calls": allow_parallel_tool_calls, **kwargs}

    def _validate_chat_with_tools_response(self, response: ChatResponse, tools: Sequence[BaseTool],
                                           allow_parallel_tool_calls: bool = False, **kwargs: Any) -> ChatResponse:
        """Keeps only the first tool call unless parallel calls are allowed."""
        if not allow_parallel_tool_calls:
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            if len(calls) > 1:
                response.message.blocks = [b for b in response.message.blocks
                                           if not isinstance(b, ToolCallBlock) or b is calls[0]]
        return response

    def get_tool_calls_from_response(self, response: ChatResponse, error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        """The ToolCallBlocks of ``response.message`` as LlamaIndex ``ToolSelection``s."""
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls:
            if error_on_no_tool_call:
                raise ValueError(f"Expected at least one tool call, but got 0 tool calls: {response.message.content!r}")
            return []
        selections = []
        for i, call in enumerate(calls):
            arguments = call.tool_kwargs if isinstance(call.tool_kwargs, dict) else {}
            selections.append(ToolSelection(tool_id=call.tool_call_id or f"call_{i}", tool_name=call.tool_name,
                                            tool_kwargs=arguments))
        return selections


# ---------------------------------------------------------------------- helpers

def _path_of(request: Request) -> str:
    """``"remote"`` when a server decoded the request, else ``"local"`` (the report's ``path``)."""
    return "remote" if getattr(request.model, "kind", None) == "remote" else "local"


def _chat_turns(messages: list[dict[str, Any]], tooling: _Tooling) -> list[dict[str, Any]]:
    """The plain turns a chat-only model is sent; tools cannot ride on the URIAL prompt."""
    if tooling.tools or tooling.tool_required:
        raise ConfigError("tools", "a chat-only model answers through the URIAL prompt, which cannot carry tools; "
                                   "give the tools to a local model or a completions server")
    return list(messages)


def _has_tool_history(messages: Sequence[dict[str, Any]]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def _split_calls(text: str, choice: ToolChoice) -> tuple[str, list[ToolCallBlock]]:
    """The answer's plain text and its tool calls as ToolCallBlocks (none when tools are off)."""
    if choice.mode == "none":
        return text, []
    parsed = parse_tool_calls(text, list(choice.names))
    blocks = [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in parsed.tool_calls]
    return parsed.text, blocks


@dataclass
class _Tooling:
    """The tool-calling arguments of one chat call."""

    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    tool_required: bool = False
    allow_parallel_tool_calls: bool = False


def _pop_tooling(kwargs: dict[str, Any]) -> _Tooling:
    return _Tooling(tools=kwargs.pop("tools", None) or None, tool_choice=kwargs.pop("tool_choice", None),
                    tool_required=bool(kwargs.pop("tool_required", False)),
                    allow_parallel_tool_calls=bool(kwargs.pop("allow_parallel_tool_calls", False)))


def _with_last(items: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """``(item, is_last)`` pairs; an empty iterator still yields one ``("", True)``.

    Holding back one delta lets the final chunk carry both text and the report, with no empty chunk.
    """
    previous: Any = _END
    for item in items:
        if previous is not _END:
            yield previous, False
        previous = item
    yield ("" if previous is _END else previous), True


_STREAMS = itertools.count(1)


async def _to_async(factory: Callable[[], Iterator[T]], cancel: CancelToken) -> AsyncIterator[T]:
    """Drives a blocking generator on one dedicated worker thread, one item at a time.

    Creating the generator (checks, model loading, tool rendering) runs there too. If the consumer
    stops early or its task is cancelled, ``cancel`` stops decoding before its next forward pass and
    the generator is closed on its own thread after the step in flight, so the model is free for the
    next call.
    """
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"deal-llamaindex-{next(_STREAMS)}")
    gen: Iterator[T] | None = None
    try:
        gen = await loop.run_in_executor(worker, factory)
        while True:
            item = await loop.run_in_executor(worker, next, gen, _END)
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        cancel.cancel()
        close: Callable[[], None] | None = getattr(gen, "close", None)
        if close is not None:
            worker.submit(close)
        worker.shutdown(wait=False)
