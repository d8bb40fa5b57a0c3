"""ChatDeAL: a LangChain chat model that decodes on a local Hugging Face model, steered by a reward."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import ConfigurableField, Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_deal._backends import ChatAnswer, Route, run_chat
from langchain_deal._backends import route as choose_route
from langchain_deal._utils import (
    PROVIDER,
    CallPlan,
    DeALSettings,
    check_call,
    dumps_args,
    iterate_in_thread,
    response_metadata,
    to_chat_dicts,
    usage_metadata,
)
from shared_core.cancel import CancelToken
from shared_core.decoding import GenerationStream
from shared_core.decoding.tool_call import forced_call_params
from shared_core.errors import ConfigError
from shared_core.request import Plan
from shared_core.tools import (
    ParsedOutput,
    check_tool_schemas,
    normalize_tools,
    parse_tool_calls,
    prepare_tool_prompt,
    resolve_tool_choice,
    streamable_length,
)

#: Configurable-field ids declared by :meth:`ChatDeAL.configurable_deal`.
CONFIGURABLE_IDS = {"reward": "deal_reward", "policy": "deal_policy", "strategy": "deal_strategy"}


class ChatDeAL(DeALSettings, BaseChatModel):
    """Chat model over a local Hugging Face model with reward-guided decoding (test-time alignment).

    Weights load on first use through a process-wide cache, so a new instance per call (as LangChain's
    configurable fields build) costs nothing. Every setting can also be given per call, through
    ``.bind(...)`` or ``invoke(..., **kwargs)``.

    Setup:
        The embedded SmolLM2-135M-Instruct (alias ``"smollm2"``) works offline with no download.

    Key init args — decoding:
        model: embedded alias (``"smollm2"``), model folder, ``.gguf`` file or hub id.
        strategy: a registered decoding strategy (``shared_core.list_strategies()``); default: the
            policy's, else the one that moves the reward when a reward is set (``deal`` for keywords and
            length budgets, ``args`` for a classifier, ``best_of_n`` for safety), else greedy (``"sample"`` when
            ``temperature > 0``).
        reward: a reward spec (dict or JSON, e.g. ``{"type": "keywords", "words": ["refund"]}``), a
            registered policy name, a ``Reward`` or a function ``texts -> scores``.
        policy: a registered policy name (``"safe"``, ``"concise"``, ``"strict"`` or your own); its
            reward, strategy and parameters apply unless overridden.
        strategy_params: the strategy's own parameters; unknown keyword arguments land here too
            (``ChatDeAL(strategy="sample", top_k=20)``).
        temperature, max_tokens, stop, seed: the standard parameters.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.

    Key init args — where answers come from:
        base_url: an OpenAI-compatible server. With ``/v1/completions`` (vLLM, SGLang, llama.cpp,
            ``deal serve``) the strategies run against it (``model`` is the served id, default: its only
            model; ``tokenizer`` names the served model's tokenizer when the server has no
            ``/tokenize``). A chat-only endpoint (detected: no ``/v1/completions``) gets the chat path.
        api_key, timeout, max_retries: the server's key and request limits.
        chat_model: any LangChain chat model (``ChatOpenAI(...)``, ...). Chat path: the URIAL prompt,
            and with a reward ``n`` answers reranked by it locally (best-of-n; ``n`` in one request
            where the model has its own ``n``). ``response_metadata["path"]`` is ``"urial+best_of_n"``
            or ``"urial"`` and ``["reason"]`` says why; a strategy that needs logits, named explicitly
            (``strategy="genarm"``), is a ``ConfigError``.

    Per-chain policies:
        ``ChatDeAL().configurable_deal()`` declares the configurable fields ``deal_reward``,
        ``deal_policy`` and ``deal_strategy``, so a chain picks its own with
        ``chain.with_config(configurable={"deal_policy": "strict"})``.

    Tool calling:
        ``bind_tools(tools, tool_choice=...)``; ``tool_choice="any"``/``"required"``/a tool name forces
        a call, decoded so that its arguments are valid JSON for the tool's schema.

    Example:
        .. code-block:: python

            from langchain_deal import ChatDeAL

            llm = ChatDeAL(model="smollm2", max_tokens=64, policy="concise")
            msg = llm.invoke("Give me two tips for staying safe online.")
            msg.content, msg.response_metadata["reward"], msg.usage_metadata
    """

    @property
    def _llm_type(self) -> str:
        return "deal-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model, "strategy": self.strategy, "policy": self.policy,
            "reward": self.reward if isinstance(self.reward, (str, dict, type(None))) else repr(self.reward),
            "strategy_params": self.strategy_params, "temperature": self.temperature,
            "max_tokens": self.max_tokens, "seed": self.seed, "base_url": self.base_url,
            "chat_model": None if self.chat_model is None else type(self.chat_model).__name__,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self.ls_params("chat", stop, kwargs)

    # ------------------------------------------------------------------ per-chain configuration

    def configurable_deal(self, **extra_fields: ConfigurableField) -> Runnable:
        """This model with ``reward``, ``policy`` and ``strategy`` configurable per run.

        The ids are ``deal_reward``, ``deal_policy`` and ``deal_strategy``::

            llm = ChatDeAL(max_tokens=64).configurable_deal()
            chain = prompt | llm | StrOutputParser()
            chain.with_config(configurable={"deal_policy": "strict"}).invoke({...})

        ``extra_fields`` declares more configurable fields (``max_tokens=ConfigurableField(id=...)``).
        """
        fields = {name: ConfigurableField(id=cid, name=cid, description=f"deal {name} for this run")
                  for name, cid in CONFIGURABLE_IDS.items()}
        return self.configurable_fields(**fields, **extra_fields)

    with_deal_config = configurable_deal

    # ------------------------------------------------------------------ tools

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Binds tools (converted with ``convert_to_openai_tool``); ``tool_choice`` may force a call.

        Args:
            tools: LangChain tools, functions with type hints and a docstring, pydantic models,
                TypedDicts, or OpenAI tool dicts.
            tool_choice: ``"auto"`` (default), ``"none"``, ``"any"``/``"required"`` (force a call to
                some tool), or a tool name / ``{"type": "function", "function": {"name": ...}}``.

        Raises:
            ConfigError: a tool that cannot be converted, an unknown ``tool_choice``, or, when a call is
                forced, a schema keyword the constrained decoder cannot enforce (see
                ``shared_core.tools.schema``; offered tools are shown to the model in full).
        """
        formatted: list[dict[str, Any]] = []
        for i, tool in enumerate(tools):
            try:
                formatted.append(convert_to_openai_tool(tool))
            except Exception as exc:
                raise ConfigError(
                    f"tools[{i}]",
                    f"cannot be converted to a tool schema ({type(exc).__name__}: {exc}); pass a LangChain tool, "
                    "a function with type hints and a docstring, a pydantic model, a TypedDict or an OpenAI tool dict",
                ) from exc
        normalized = normalize_tools(formatted)
        choice = resolve_tool_choice(tool_choice, normalized)
        if choice.forced:  # a forced call is decoded to the schema: check now that every keyword can be enforced
            check_tool_schemas([t for t in normalized if t["function"]["name"] in choice.names])
        return super().bind(tools=normalized, tool_choice=tool_choice, **kwargs)

    # ------------------------------------------------------------------ generation

    def _chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        on_token: Callable[[str, ChatGenerationChunk], None] | None,
        cancel: CancelToken | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The one generation path: ``_stream`` yields these chunks, ``_generate`` adds them up."""
        plan = check_call(self, kwargs, stop=stop)
        route = choose_route(self, plan.model)
        if route.chat is not None:
            yield from self._chat_only_chunks(messages, plan, route, on_token)
            return
        chat = to_chat_dicts(messages)
        lm = route.lm
        prepared = prepare_tool_prompt(chat, plan.tools, tokenizer=lm.tokenizer, tool_choice=plan.choice)
        tools_on = bool(plan.tools) and plan.choice.mode != "none"
        if plan.choice.forced:
            call_params = forced_call_params(plan.tools, plan.choice,
                                             temperature=float(plan.decided.params.get("temperature", 0.0)))
            # a forced call is data, not prose: decoded to fit the schema, without the reward
            forced = Plan(strategy="tool_call", reward=None, params=call_params, policy=plan.decided.policy,
                          chosen_by="argument")
            plan = dataclasses.replace(plan, decided=forced, stop=None,
                                       max_new_tokens=max(plan.max_new_tokens, self.tool_call_max_tokens))
        request = plan.request(lm, prepared.messages, tools=prepared.template_tools, cancel=cancel)
        deltas = GenerationStream(request)
        text = ""
        shown = ""
        for delta in deltas:
            text += delta
            if plan.choice.forced:
                continue
            visible = text[: streamable_length(text)].rstrip() if tools_on else text
            if len(visible) > len(shown) and visible.startswith(shown):
                piece, shown = visible[len(shown):], visible
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if on_token is not None:
                    on_token(piece, chunk)
                yield chunk
        result = deltas.result
        names = [t["function"]["name"] for t in plan.tools]
        parsed = parse_tool_calls(result.text, names) if tools_on else ParsedOutput(result.text, [])
        rest = parsed.text[len(shown):] if parsed.text.startswith(shown) else ""
        metadata = {**response_metadata(result, request, model_name=route.name), "path": route.path, "reason": None}
        if parsed.errors:
            metadata["tool_call_errors"] = parsed.errors
        last = AIMessageChunk(
            content=rest,
            tool_call_chunks=[
                {"type": "tool_call_chunk", "name": c.name, "args": dumps_args(c.arguments), "id": c.id, "index": i}
                for i, c in enumerate(parsed.tool_calls)
            ],
            usage_metadata=usage_metadata(result),  # type: ignore[arg-type]
            response_metadata=metadata,
            chunk_position="last",
        )
        chunk = ChatGenerationChunk(message=last, generation_info={"finish_reason": result.finish_reason})
        if on_token is not None:
            on_token(rest, chunk)
        yield chunk

    def _chat_only_chunks(self, messages: list[BaseMessage], plan: CallPlan, route: Route,
                          on_token: Callable[[str, ChatGenerationChunk], None] | None) -> Iterator[ChatGenerationChunk]:
        """A chat-only model's answer (URIAL, best-of-n with a reward): deltas, then the report chunk."""
        answer: ChatAnswer | None = None
        for item in run_chat(route, plan.decided, messages, max_new_tokens=plan.max_new_tokens, stop=plan.stop,
                             seed=plan.seed, tools=plan.tools, max_tokens_given=plan.max_tokens_given,
                             temperature=plan.temperature):
            if isinstance(item, ChatAnswer):
                answer = item
                continue
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
            if on_token is not None:
                on_token(item, chunk)
            yield chunk
        assert answer is not None
        result_usage = answer.message.usage_metadata
        last = AIMessageChunk(content="", usage_metadata=result_usage,
                              response_metadata={"model_name": route.name, "model_provider": PROVIDER,
                                                 **answer.summary},
                              chunk_position="last")
        chunk = ChatGenerationChunk(message=last, generation_info={"finish_reason": answer.summary["finish_reason"]})
        if on_token is not None:
            on_token("", chunk)
        yield chunk

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        on_token = None
        if run_manager is not None:
            def on_token(token: str, chunk: ChatGenerationChunk) -> None:
                run_manager.on_llm_new_token(token, chunk=chunk)
        yield from self._chunks(messages, stop, on_token, None, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        check_call(self, kwargs, stop=stop)  # bad input fails here, before a thread is used
        cancel = CancelToken()
        async for chunk in iterate_in_thread(lambda: self._chunks(messages, stop, None, cancel, **kwargs), cancel):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [chunk async for chunk in self._astream(messages, stop, run_manager, **kwargs)]
        return generate_from_stream(iter(chunks))
