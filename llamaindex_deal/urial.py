"""``URIALLLM``: in-context alignment (URIAL) for any LlamaIndex LLM, with optional reward reranking.

URIAL aligns a model through its prompt alone: a short preamble and K restyled examples before the
user's query (see :mod:`shared_core.urial`). That is all an API-only model or an untuned base model
allows, so this wrapper takes any LlamaIndex ``LLM`` and:

- *text mode* (base / completion models): sends the URIAL text prompt through ``stream_complete``,
  stops reading at the next ``# Query:`` turn, and parses the answer out of the fences;
- *chat mode* (chat models): sends the same content as a system message plus example turns.

With ``n > 1`` it draws ``n`` answers and keeps the one the ``reward`` scores highest (configure the
inner LLM to sample, e.g. ``sample_kwargs={"strategy": "sample", "temperature": 0.8}`` for ``DeAL``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

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
)
from llama_index.core.bridge.pydantic import Field, SerializeAsAny
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import LLM

from llamaindex_deal._utils import to_engine_messages
from shared_core.errors import ConfigError
from shared_core.policies import build_reward
from shared_core.result import GenerationStats
from shared_core.rewards.runtime import score_texts
from shared_core.urial import URIAL_STOP_STRINGS, parse_urial_answer, preamble_text, urial_chat_messages, urial_prompt

Mode = Literal["auto", "text", "chat"]


class URIALLLM(CustomLLM):
    """Wraps a LlamaIndex LLM with the URIAL prompt; optionally reranks ``n`` answers with a reward.

    Args:
        llm: the LLM to align (an API client, a base model, ``DeAL`` ...).
        variant: the built-in examples, ``"safe"`` (one is a kind refusal) or ``"help"``.
        examples: your own ``(query, answer)`` pairs or ``{"query", "answer"}`` dicts, instead.
        preamble: your own preamble text, instead of the built-in one.
        mode: ``"text"`` (URIAL text prompt), ``"chat"`` (system + example turns) or ``"auto"``
            (chat when the inner LLM's metadata says it is a chat model).
        n: how many answers to draw; the best by ``reward`` is returned.
        reward: a reward spec, policy name, function or Reward scoring the answers (needed for n > 1).
        sample_kwargs: keyword arguments passed to every inner call; an integer ``seed`` there is
            increased by one per sample so the samples differ.

    Example:
        >>> from llamaindex_deal import DeAL, URIALLLM
        >>> base = DeAL(model="gemma3-270m", max_new_tokens=128)                         # doctest: +SKIP
        >>> llm = URIALLLM(llm=base, mode="text")                                         # doctest: +SKIP
        >>> llm.complete("How do I keep basil fresh?").text                               # doctest: +SKIP
    """

    llm: SerializeAsAny[LLM] = Field(description="The LLM to align.")
    variant: Literal["safe", "help"] = Field(default="safe", description="Built-in example set.")
    examples: list[Any] | None = Field(default=None, description="Your own (query, answer) examples.")
    preamble: str | None = Field(default=None, description="Your own preamble.")
    mode: Mode = Field(default="auto", description="'text', 'chat' or 'auto'.")
    n: int = Field(default=1, description="Answers to draw; the reward picks one.")
    reward: Any = Field(default=None, description="Reward spec, policy name, function or Reward.")
    sample_kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to every inner call.")

    def __init__(self, **kwargs: Any) -> None:
        if not isinstance(kwargs.get("llm"), LLM):
            got = "nothing" if kwargs.get("llm") is None else type(kwargs["llm"]).__name__
            raise ConfigError("llm", f"must be the llama_index LLM to align, got {got}")
        if kwargs.get("mode", "auto") not in ("auto", "text", "chat"):
            raise ConfigError("mode", f"must be 'auto', 'text' or 'chat', got {kwargs['mode']!r}")
        if kwargs.get("variant", "safe") not in ("safe", "help"):
            raise ConfigError("variant", f"must be 'safe' or 'help', got {kwargs['variant']!r}")
        super().__init__(**kwargs)
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError("n", f"must be a positive integer, got {self.n!r}")
        if self.n > 1 and self.reward is None:
            raise ConfigError("reward", "reranking n > 1 answers needs a reward (a spec, a policy name or a function)")
        preamble_text(variant=self.variant, examples=self.examples, preamble=self.preamble)  # validates them
        build_reward(self.reward)  # validates the spec or policy name, loads nothing

    @classmethod
    def class_name(cls) -> str:
        return "URIALLLM"

    @property
    def metadata(self) -> LLMMetadata:
        inner = self.llm.metadata
        return LLMMetadata(context_window=inner.context_window, num_output=inner.num_output,
                           is_chat_model=True, is_function_calling_model=False,
                           model_name=f"urial({inner.model_name})")

    def _text_mode(self) -> bool:
        if self.mode == "auto":
            return not self.llm.metadata.is_chat_model
        return self.mode == "text"

    def _call_kwargs(self, index: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.sample_kwargs, **kwargs}
        if isinstance(merged.get("seed"), int) and not isinstance(merged.get("seed"), bool):
            merged["seed"] = merged["seed"] + index
        return merged

    # ------------------------------------------------------------------ one sample

    def _text_sample(self, conversation: Any, kwargs: dict[str, Any]) -> str:
        prompt = urial_prompt(conversation, variant=self.variant, examples=self.examples, preamble=self.preamble)
        return _read_until_stop(iter(self.llm.stream_complete(prompt.text, formatted=True, **kwargs)))

    async def _atext_sample(self, conversation: Any, kwargs: dict[str, Any]) -> str:
        prompt = urial_prompt(conversation, variant=self.variant, examples=self.examples, preamble=self.preamble)
        chunks = await self.llm.astream_complete(prompt.text, formatted=True, **kwargs)
        return await _aread_until_stop(chunks)

    def _chat_messages(self, conversation: Any) -> list[ChatMessage]:
        messages = urial_chat_messages(conversation, variant=self.variant, examples=self.examples,
                                       preamble=self.preamble)
        return [ChatMessage(role=MessageRole(m["role"]), content=m["content"]) for m in messages]

    # ------------------------------------------------------------------ n samples, reranked

    def _choose(self, query: str, answers: list[str],
                stats: GenerationStats | None = None) -> tuple[str, dict[str, Any]]:
        """The best answer by the reward (the first of equals; the only one when n == 1) and the report."""
        report: dict[str, Any] = {"urial": True, "variant": self.variant if self.examples is None else "custom",
                                  "mode": "text" if self._text_mode() else "chat", "n": len(answers)}
        reward = build_reward(self.reward)
        if reward is None:
            return answers[0], {**report, "reward": None, "scores": []}
        scores = score_texts(reward, answers, prompt=query, stats=stats)
        best = max(range(len(answers)), key=lambda i: scores[i])
        policy = self.reward if isinstance(self.reward, str) and not self.reward.strip().startswith("{") else None
        return answers[best], {**report, "policy": policy, "reward": scores[best], "scores": scores, "chosen": best}

    def takes_n(self) -> bool:
        """Whether the wrapped LLM draws several chat answers in one request (OpenAI-compatible clients' ``n``)."""
        try:
            from llama_index.llms.openai import OpenAI
        except ImportError:
            return False
        return isinstance(self.llm, OpenAI)

    def draw(self, conversation: Any, kwargs: dict[str, Any]) -> tuple[list[str], list[ChatResponse | None], int]:
        """The ``n`` answers (URIAL format removed), the chat responses behind them, and the requests sent.

        In chat mode an OpenAI-compatible client is asked once for ``n`` choices (unless the call fixes a
        ``seed``: then once per sample, each with its own seed); an endpoint that returns fewer is asked
        again, one answer per request, for the rest. Other LLMs get one request per answer.
        """
        answers: list[str] = []
        responses: list[ChatResponse | None] = []
        requests = 0
        merged = {**self.sample_kwargs, **kwargs}
        if self.n > 1 and not self._text_mode() and self.takes_n() and merged.get("seed") is None:
            response = self.llm.chat(self._chat_messages(conversation), **{**merged, "n": self.n})
            requests = 1
            choices = getattr(response.raw, "choices", None) or []
            for choice in choices[: self.n]:
                content = getattr(getattr(choice, "message", None), "content", None)
                if isinstance(content, str):
                    answers.append(content.strip())
                    responses.append(response)
        for i in range(len(answers), self.n):
            call_kwargs = self._call_kwargs(i, kwargs)
            requests += 1
            if self._text_mode():
                answers.append(parse_urial_answer(self._text_sample(conversation, call_kwargs)))
                responses.append(None)
            else:
                response = self.llm.chat(self._chat_messages(conversation), **call_kwargs)
                answers.append((response.message.content or "").strip())
                responses.append(response)
        return answers, responses, requests

    def _answer(self, conversation: Any, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
        answers, _, _ = self.draw(conversation, kwargs)
        text, report = self._choose(_query_of(conversation), answers)
        return text, report, answers

    async def _aanswer(self, conversation: Any, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
        answers = []
        for i in range(self.n):
            call_kwargs = self._call_kwargs(i, kwargs)
            if self._text_mode():
                answers.append(parse_urial_answer(await self._atext_sample(conversation, call_kwargs)))
            else:
                response = await self.llm.achat(self._chat_messages(conversation), **call_kwargs)
                answers.append((response.message.content or "").strip())
        text, report = await asyncio.to_thread(self._choose, _query_of(conversation), answers)
        return text, report, answers

    # ------------------------------------------------------------------ LlamaIndex API

    @staticmethod
    def _conversation(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        return [{"role": m["role"], "content": m["content"]} for m in to_engine_messages(messages)]

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answers ``prompt`` as the URIAL query."""
        text, report, answers = self._answer(prompt, kwargs)
        return CompletionResponse(text=text, additional_kwargs=report, raw={**report, "answers": answers})

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """One chunk holding the whole answer (it is parsed and, with n > 1, chosen before it is shown)."""
        response = self.complete(prompt, formatted=formatted, **kwargs)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw,
                                     additional_kwargs=response.additional_kwargs)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text, report, answers = await self._aanswer(prompt, kwargs)
        return CompletionResponse(text=text, additional_kwargs=report, raw={**report, "answers": answers})

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        response = await self.acomplete(prompt, formatted=formatted, **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw,
                                     additional_kwargs=response.additional_kwargs)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answers the conversation's last user message; earlier turns become URIAL turns."""
        text, report, answers = self._answer(self._conversation(messages), kwargs)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                            additional_kwargs=report, raw={**report, "answers": answers})

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        response = self.chat(messages, **kwargs)

        def gen() -> ChatResponseGen:
            yield ChatResponse(message=response.message, delta=response.message.content, raw=response.raw,
                               additional_kwargs=response.additional_kwargs)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text, report, answers = await self._aanswer(self._conversation(messages), kwargs)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                            additional_kwargs=report, raw={**report, "answers": answers})

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        response = await self.achat(messages, **kwargs)

        async def gen() -> ChatResponseAsyncGen:
            yield ChatResponse(message=response.message, delta=response.message.content, raw=response.raw,
                               additional_kwargs=response.additional_kwargs)

        return gen()


# ---------------------------------------------------------------------- helpers


def _query_of(conversation: Any) -> str:
    if isinstance(conversation, str):
        return conversation
    users = [m["content"] for m in conversation if m.get("role") == "user"]
    return users[-1] if users else ""


def _stop_index(text: str) -> int:
    hits = [i for i in (text.find(s) for s in URIAL_STOP_STRINGS) if i >= 0]
    return min(hits) if hits else -1


def _read_until_stop(chunks: Iterator[CompletionResponse]) -> str:
    """Reads a completion stream until the model starts the next URIAL turn, then stops it."""
    text = ""
    try:
        for chunk in chunks:
            text = chunk.text if chunk.text is not None else text + (chunk.delta or "")
            cut = _stop_index(text)
            if cut >= 0:
                return text[:cut]
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return text


async def _aread_until_stop(chunks: AsyncIterator[CompletionResponse]) -> str:
    text = ""
    try:
        async for chunk in chunks:
            text = chunk.text if chunk.text is not None else text + (chunk.delta or "")
            cut = _stop_index(text)
            if cut >= 0:
                return text[:cut]
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return text
