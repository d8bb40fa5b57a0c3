"""URIALChatModel: in-context alignment (URIAL) for any LangChain chat model, e.g. an API-only one.

The wrapped model never sees weights or logits from us: each call's conversation is rewritten into the
URIAL layout (a preamble plus K restyled examples, see :mod:`shared_core.urial`) and sent on. With a
reward and ``n > 1`` the wrapper samples ``n`` answers and keeps the one the reward scores highest
(best-of-n reranking, the black-box counterpart of reward-guided decoding).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import get_executor_for_config
from pydantic import Field

from langchain_deal._utils import to_chat_dicts
from shared_core.errors import ConfigError
from shared_core.policies import build_reward, check_reward
from shared_core.result import GenerationStats
from shared_core.rewards.runtime import score_texts


class URIALChatModel(BaseChatModel):
    """Wraps any chat model with the URIAL prompt, optionally reranking ``n`` samples with a reward.

    Args:
        llm: the chat model to align (an API model, ``ChatDeAL``, anything ``BaseChatModel``).
        variant: built-in examples, ``"safe"`` (includes a kind refusal) or ``"help"``.
        examples: your own ``(query, answer)`` pairs or ``{"query", "answer"}`` dicts, replacing the
            built-in ones.
        preamble: your own preamble, replacing the built-in one.
        prompt_format: ``"chat"`` sends the examples as user/assistant turns (for chat APIs); ``"text"``
            sends the whole URIAL text prompt as one user message, stops at the next ``# Query:`` and
            parses the fenced answer (for completion-style models behind a chat interface).
        reward: a reward spec, policy name, ``Reward`` or function used to rerank the samples.
        n: how many answers to sample and rerank (needs ``reward`` when above 1).

    ``response_metadata["urial"]`` reports the variant, format, number of examples, the candidates'
    scores and which one was returned.

    Example:
        .. code-block:: python

            from langchain_deal import ChatDeAL, URIALChatModel

            aligned = URIALChatModel(llm=ChatDeAL(max_tokens=64), variant="safe")
            aligned.invoke("How do I pick a lock?").content
    """

    llm: BaseChatModel
    variant: Literal["safe", "help"] = "safe"
    examples: list[Any] | None = None
    preamble: str | None = None
    prompt_format: Literal["chat", "text"] = "chat"
    reward: Any = None
    n: int = Field(default=1, ge=1, le=32)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._check()

    def _check(self) -> None:
        from shared_core.urial import urial_chat_messages

        urial_chat_messages("check", variant=self.variant, examples=self.examples, preamble=self.preamble)
        if self.n > 1 and self.reward is None:
            raise ConfigError("n", f"reranking {self.n} samples needs a reward (a spec, a policy name or a function)")
        if self.reward is not None:
            check_reward(self.reward)

    @property
    def _llm_type(self) -> str:
        return "urial-" + getattr(self.llm, "_llm_type", type(self.llm).__name__)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = self.llm._get_ls_params(stop=stop, **kwargs)
        params["ls_model_type"] = "chat"
        return params

    # ------------------------------------------------------------------ prompt

    def _urial_messages(self, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
        from shared_core.urial import build_urial_prompt, urial_chat_messages

        chat = to_chat_dicts(messages)
        for i, message in enumerate(chat):
            if message["role"] == "tool" or message.get("tool_calls"):
                raise ConfigError(f"messages[{i}]", "URIALChatModel does not carry tool calls; send plain turns")
        kwargs = {"variant": self.variant, "examples": self.examples, "preamble": self.preamble}
        if self.prompt_format == "text":
            return [HumanMessage(build_urial_prompt(chat, **kwargs))]
        out: list[BaseMessage] = []
        for message in urial_chat_messages(chat, **kwargs):
            if message["role"] == "system":
                out.append(SystemMessage(message["content"]))
            elif message["role"] == "user":
                out.append(HumanMessage(message["content"]))
            else:
                out.append(AIMessage(message["content"]))
        return out

    def _stop(self, stop: list[str] | None) -> list[str] | None:
        if self.prompt_format != "text":
            return stop
        from shared_core.urial import URIAL_STOP_STRINGS

        return [*(stop or []), *URIAL_STOP_STRINGS]

    def _clean(self, text: str) -> str:
        if self.prompt_format != "text":
            return text
        from shared_core.urial import parse_urial_answer

        return parse_urial_answer(text)

    def _report(self, texts: list[str], scores: list[float] | None, chosen: int) -> dict[str, Any]:
        from shared_core.urial import default_examples

        k = len(self.examples) if self.examples is not None else len(default_examples(self.variant))
        return {
            "variant": self.variant if self.examples is None else "custom",
            "prompt_format": self.prompt_format,
            "examples": k,
            "n": len(texts),
            "scores": scores,
            "chosen": chosen,
        }

    def _rerank(self, texts: list[str], messages: Sequence[BaseMessage],
                stats: GenerationStats | None = None) -> tuple[list[float] | None, int]:
        """The reward's scores of ``texts`` and the index of the best (the first of equals); none for one text."""
        if self.reward is None or len(texts) == 1:
            return None, 0
        reward = build_reward(self.reward)
        assert reward is not None
        query = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        scores = score_texts(reward, texts, prompt=query, stats=stats)
        return scores, max(range(len(scores)), key=scores.__getitem__)

    def _result(self, results: list[AIMessage], messages: Sequence[BaseMessage]) -> ChatResult:
        texts = [self._clean(r.text) for r in results]
        scores, chosen = self._rerank(texts, messages)
        best = results[chosen]
        metadata = {**best.response_metadata, "urial": self._report(texts, scores, chosen)}
        message = AIMessage(content=texts[chosen], response_metadata=metadata, usage_metadata=best.usage_metadata,
                            id=best.id)
        return ChatResult(generations=[ChatGeneration(message=message)])

    # ------------------------------------------------------------------ generation

    def _samplers(self, kwargs: dict[str, Any]) -> list[Runnable]:
        """One runnable per sample, each with its own seed when seeds apply.

        Seeds apply when the call passes ``seed`` or the wrapped model has a ``seed`` field (ChatOpenAI,
        ChatDeAL): sample ``i`` gets ``seed + i`` (base 0 when unset), so n seeded samples differ.
        """
        base = kwargs.pop("seed", None)
        if self.n == 1 and base is None:
            return [self.llm]
        if base is None and "seed" not in getattr(type(self.llm), "model_fields", {}):
            return [self.llm] * self.n
        if base is None:
            base = getattr(self.llm, "seed", None) or 0
        return [self.llm.bind(seed=base + i) for i in range(self.n)]

    def takes_n(self) -> bool:
        """Whether the wrapped model draws several answers in one request (its own ``n`` field, as ChatOpenAI)."""
        return "n" in getattr(type(self.llm), "model_fields", {})

    def draw(self, messages: Sequence[BaseMessage], stop: list[str] | None = None,
             **kwargs: Any) -> tuple[list[AIMessage], int]:
        """The ``n`` raw answers to the URIAL prompt of ``messages`` and the number of requests sent.

        A model with its own ``n`` parameter is asked once for ``n`` answers (a call that fixes ``seed``
        asks per sample instead, so each gets its own); an endpoint that returns fewer is asked again,
        one answer per request, for the rest. Other models get ``n`` requests, run side by side.
        """
        prompt = self._urial_messages(messages)
        stops = self._stop(stop)
        drawn: list[AIMessage] = []
        requests = 0
        if self.n > 1 and self.takes_n() and kwargs.get("seed") is None:
            result = self.llm.generate([prompt], stop=stops, n=self.n, **kwargs)
            drawn = [g.message for g in result.generations[0] if isinstance(g.message, AIMessage)][: self.n]
            requests = 1
        missing = self.n - len(drawn)
        if missing:
            samplers = self._samplers(dict(kwargs))[:missing]
            call_kwargs = {k: v for k, v in kwargs.items() if k != "seed"}
            with get_executor_for_config(None) as executor:  # the samples run side by side, as batch() would
                results = list(executor.map(lambda r: r.invoke(prompt, stop=stops, **call_kwargs), samplers))
            drawn += [r for r in results if isinstance(r, AIMessage)]
            requests += len(samplers)
        return drawn, requests

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        drawn, _ = self.draw(messages, stop, **kwargs)
        return self._result(drawn, messages)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        prompt = self._urial_messages(messages)
        samplers = self._samplers(kwargs)
        stops = self._stop(stop)
        results = await asyncio.gather(*(r.ainvoke(prompt, stop=stops, **kwargs) for r in samplers))
        # reranking runs a reward (maybe a model): never on the event loop
        return await asyncio.to_thread(self._result, [r for r in results if isinstance(r, AIMessage)], messages)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if self.n > 1 or self.prompt_format == "text":  # reranking / parsing needs the whole answer
            message = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
            chunk = ChatGenerationChunk(message=AIMessageChunk(
                content=message.content, response_metadata=message.response_metadata,
                usage_metadata=getattr(message, "usage_metadata", None), chunk_position="last"))
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
            return
        prompt = self._urial_messages(messages)
        config: dict[str, Any] = {}
        text = ""
        for part in self.llm.stream(prompt, config=config, stop=stop, **kwargs):
            assert isinstance(part, AIMessageChunk)
            text += part.text
            chunk = ChatGenerationChunk(message=AIMessageChunk(
                content=part.content, response_metadata=part.response_metadata, usage_metadata=part.usage_metadata))
            if run_manager and part.text:
                run_manager.on_llm_new_token(part.text, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", response_metadata={"urial": self._report([text], None, 0)}, chunk_position="last"))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        if self.n > 1 or self.prompt_format == "text":
            message = (await self._agenerate(messages, stop, run_manager, **kwargs)).generations[0].message
            yield ChatGenerationChunk(message=AIMessageChunk(
                content=message.content, response_metadata=message.response_metadata,
                usage_metadata=getattr(message, "usage_metadata", None), chunk_position="last"))
            return
        prompt = self._urial_messages(messages)
        config: dict[str, Any] = {}
        text = ""
        async for part in self.llm.astream(prompt, config=config, stop=stop, **kwargs):
            assert isinstance(part, AIMessageChunk)
            text += part.text
            chunk = ChatGenerationChunk(message=AIMessageChunk(
                content=part.content, response_metadata=part.response_metadata, usage_metadata=part.usage_metadata))
            if run_manager and part.text:
                await run_manager.on_llm_new_token(part.text, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", response_metadata={"urial": self._report([text], None, 0)}, chunk_position="last"))
