"""DeALLLM: a LangChain text-completion LLM (``BaseLLM``) over deal's decoding engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams
from langchain_core.messages import HumanMessage
from langchain_core.outputs import GenerationChunk, LLMResult

from langchain_deal._backends import ChatAnswer, Route, run_chat
from langchain_deal._backends import route as choose_route
from langchain_deal._utils import (
    PROVIDER,
    CallPlan,
    DeALSettings,
    check_call,
    iterate_in_thread,
    response_metadata,
    usage_metadata,
)
from shared_core.cancel import CancelToken
from shared_core.decoding import GenerationStream
from shared_core.errors import ConfigError


class DeALLLM(DeALSettings, BaseLLM):
    """Plain-text completion on a local model, steered by a reward; the string-in, string-out sibling of
    :class:`~langchain_deal.ChatDeAL` with the same fields and per-call overrides.

    ``chat`` decides how a prompt string reaches the model: ``None`` (default) sends it as one user
    message when the model has a chat template (instruction models), ``False`` continues the raw text
    (base models), ``True`` always uses the template.

    ``base_url``/``api_key``/``tokenizer`` and ``chat_model`` work as for ChatDeAL (a remote completions
    server; a chat-only endpoint or any chat model answering the prompt as one user message through
    URIAL, with best-of-n reranking when a reward is set).

    Each generation's ``generation_info`` holds the same metadata ChatDeAL puts in
    ``response_metadata`` (strategy, policy, reward breakdown, stats, token usage).

    Example:
        .. code-block:: python

            from langchain_deal import DeALLLM

            llm = DeALLLM(model="smollm2", max_tokens=48, reward={"type": "keywords", "words": ["salt"]})
            llm.invoke("How do I cook pasta?")
    """

    chat: bool | None = None

    @property
    def _llm_type(self) -> str:
        return "deal-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "strategy": self.strategy, "policy": self.policy,
                "strategy_params": self.strategy_params, "max_tokens": self.max_tokens, "chat": self.chat}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self.ls_params("llm", stop, kwargs)

    def _chunks(self, prompt: str, stop: list[str] | None, on_token: Callable[[str, GenerationChunk], None] | None,
                cancel: CancelToken | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        if kwargs.get("tools"):
            raise ConfigError("tools", "DeALLLM completes text; use ChatDeAL.bind_tools for tool calling")
        plan = check_call(self, kwargs, stop=stop)
        route = choose_route(self, plan.model)
        if route.chat is not None:
            yield from self._chat_only_chunks(prompt, plan, route, on_token)
            return
        request = plan.request(route.lm, prompt, chat=self.chat, cancel=cancel)
        deltas = GenerationStream(request)
        for delta in deltas:
            chunk = GenerationChunk(text=delta)
            if on_token is not None:
                on_token(delta, chunk)
            yield chunk
        result = deltas.result
        info = {**response_metadata(result, request, model_name=route.name), "path": route.path, "reason": None}
        info["usage_metadata"] = usage_metadata(result)
        yield GenerationChunk(text="", generation_info=info)

    def _chat_only_chunks(self, prompt: str, plan: CallPlan, route: Route,
                          on_token: Callable[[str, GenerationChunk], None] | None) -> Iterator[GenerationChunk]:
        """A chat-only model's answer to ``prompt`` as one user message (URIAL, best-of-n with a reward)."""
        for item in run_chat(route, plan.decided, [HumanMessage(prompt)], max_new_tokens=plan.max_new_tokens,
                             stop=plan.stop, seed=plan.seed, max_tokens_given=plan.max_tokens_given,
                             temperature=plan.temperature):
            if isinstance(item, ChatAnswer):
                info = {"model_name": route.name, "model_provider": PROVIDER, **item.summary,
                        "usage_metadata": dict(item.message.usage_metadata or {})}
                yield GenerationChunk(text="", generation_info=info)
                return
            chunk = GenerationChunk(text=item)
            if on_token is not None:
                on_token(item, chunk)
            yield chunk

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        on_token = None
        if run_manager is not None:
            def on_token(token: str, chunk: GenerationChunk) -> None:
                run_manager.on_llm_new_token(token, chunk=chunk)
        yield from self._chunks(prompt, stop, on_token, None, **kwargs)

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        check_call(self, kwargs, stop=stop)
        cancel = CancelToken()
        async for chunk in iterate_in_thread(lambda: self._chunks(prompt, stop, None, cancel, **kwargs), cancel):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        generations = []
        for prompt in prompts:
            final: GenerationChunk | None = None
            for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                final = chunk if final is None else final + chunk
            assert final is not None
            generations.append([final])
        return LLMResult(generations=generations, llm_output={"model_name": self.model})

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        generations = []
        for prompt in prompts:
            final: GenerationChunk | None = None
            async for chunk in self._astream(prompt, stop, run_manager, **kwargs):
                final = chunk if final is None else final + chunk
            assert final is not None
            generations.append([final])
        return LLMResult(generations=generations, llm_output={"model_name": self.model})
