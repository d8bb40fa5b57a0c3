"""URIALLLM around any LlamaIndex LLM: prompts, parsing, early stop, reward reranking, bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.custom import CustomLLM

from llamaindex_deal import URIALLLM, DeAL
from shared_core.errors import ConfigError
from shared_core.urial import build_urial_prompt, urial_chat_messages


class ScriptedLLM(CustomLLM):
    """Returns scripted outputs in turn and records what it was asked; streams in 4-character chunks."""

    outputs: list[str]
    chat_model: bool = False
    prompts: list[Any] = []
    kwargs: list[dict[str, Any]] = []
    chunks_read: int = 0

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=self.chat_model, model_name="scripted")

    def _next(self, prompt: Any, kwargs: dict[str, Any]) -> str:
        self.prompts.append(prompt)
        self.kwargs.append(kwargs)
        return self.outputs[(len(self.prompts) - 1) % len(self.outputs)]

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._next(prompt, kwargs))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self._next(prompt, kwargs)

        def gen() -> CompletionResponseGen:
            for i in range(0, len(text), 4):
                self.chunks_read += 1
                yield CompletionResponse(text=text[: i + 4], delta=text[i: i + 4])

        return gen()

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=self._next(messages, kwargs)))


def _scripted(*outputs: str, chat: bool = False) -> ScriptedLLM:
    return ScriptedLLM(outputs=list(outputs), chat_model=chat, prompts=[], kwargs=[])


def test_text_mode_sends_the_urial_prompt_and_stops_at_the_next_turn() -> None:
    continuation = "Keep the stems in water.\n```\n\n# Query:\n```Something the model invented" + " filler" * 50
    inner = _scripted(continuation)
    llm = URIALLLM(llm=inner)  # auto: the inner LLM is not a chat model, so text mode
    response = llm.complete("How do I keep basil fresh?")
    assert response.text == "Keep the stems in water."
    assert inner.prompts == [build_urial_prompt("How do I keep basil fresh?")]
    assert inner.chunks_read < len(continuation) / 4 / 2  # stopped reading right after the stop string
    assert response.additional_kwargs["mode"] == "text" and response.additional_kwargs["variant"] == "safe"


def test_chat_mode_sends_system_and_example_turns() -> None:
    inner = _scripted("  Water it in the morning.  ", chat=True)
    llm = URIALLLM(llm=inner, variant="help")
    history = [ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
               ChatMessage(role=MessageRole.USER, content="When should I water basil?")]
    response = llm.chat(history)
    assert response.message.content == "Water it in the morning."
    expected = urial_chat_messages([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "When should I water basil?"}], variant="help")
    assert [(m.role.value, m.content) for m in inner.prompts[0]] == [(m["role"], m["content"]) for m in expected]


def test_reranking_keeps_the_answer_the_reward_prefers() -> None:
    answers = ["Basil likes shade.", "Basil likes warm sun.", "Basil is green."]
    inner = _scripted(*(a + "\n```\n" for a in answers))
    llm = URIALLLM(llm=inner, n=3, reward={"type": "keywords", "words": ["sun", "warm"]},
                   sample_kwargs={"seed": 10, "strategy": "sample"})
    response = llm.complete("Where does basil grow?")
    assert response.text == "Basil likes warm sun."
    assert response.additional_kwargs["chosen"] == 1
    assert response.additional_kwargs["scores"] == pytest.approx([0.0, 1.0, 0.0])
    assert response.raw["answers"] == answers
    assert [k["seed"] for k in inner.kwargs] == [10, 11, 12]  # each sample gets its own seed
    assert all(k["strategy"] == "sample" for k in inner.kwargs)


async def test_async_and_streaming_give_the_same_answer() -> None:
    llm = URIALLLM(llm=_scripted("Sure: water daily.\n```\n\n# Query:"))
    assert (await llm.acomplete("q?")).text == "Sure: water daily."
    assert "".join(c.delta or "" for c in llm.stream_complete("q?")) == "Sure: water daily."
    chunks = [c async for c in await llm.astream_chat([ChatMessage(role=MessageRole.USER, content="q?")])]
    assert chunks[-1].message.content == "Sure: water daily."


def test_wraps_deal_on_a_base_style_prompt(tiny_llm: Callable[..., DeAL]) -> None:
    """Around DeAL in text mode the raw URIAL prompt is decoded (no chat template) and reranked."""
    llm = URIALLLM(llm=tiny_llm(max_new_tokens=6), mode="text", n=2, reward={"type": "length", "max_words": 2},
                   examples=[("Name a fruit.", "Apple.")], preamble="Answer briefly.",  # fits the tiny model
                   sample_kwargs={"strategy": "sample", "seed": 1, "temperature": 1.0})
    response = llm.complete("Name a herb.")
    assert len(response.raw["answers"]) == 2 and response.raw["answers"][0] != response.raw["answers"][1]
    assert response.additional_kwargs["reward"] == max(response.additional_kwargs["scores"])


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"n": 0}, "n", "must be a positive integer"),
        ({"n": 2}, "reward", "needs a reward"),
        ({"variant": "spicy"}, "variant", "must be 'safe' or 'help'"),
        ({"mode": "json"}, "mode", "must be 'auto', 'text' or 'chat'"),
        ({"reward": "nope"}, "reward", "unknown policy 'nope'"),
        ({"examples": [("only a query", "")]}, "examples[0].answer", "non-empty"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        URIALLLM(llm=_scripted("x"), **kwargs)
    assert info.value.field == field


def test_the_inner_llm_must_be_a_llamaindex_llm() -> None:
    with pytest.raises(ConfigError, match="llm: must be the llama_index LLM to align, got str"):
        URIALLLM(llm="gpt-4")


def test_tool_messages_are_rejected_with_the_role_named() -> None:
    llm = URIALLLM(llm=_scripted("x"))
    with pytest.raises(ConfigError, match="unknown role 'tool'"):
        llm.chat([ChatMessage(role=MessageRole.USER, content="hi"), ChatMessage(role=MessageRole.TOOL, content="r")])


def test_deal_urial_option_uses_the_engines_cached_preamble(tiny_llm: Callable[..., DeAL]) -> None:
    urial = {"examples": [("Name a fruit.", "Apple.")], "preamble": "Answer briefly."}
    llm = tiny_llm(max_new_tokens=4, urial=urial)
    first, second = llm.complete("Name a herb."), llm.complete("Name a tree.")
    assert "```" not in first.text
    assert second.raw["stats"]["extra"]["prefix_tokens_reused"] > 0  # the preamble was encoded once
    assert "".join(c.delta or "" for c in llm.stream_complete("Name a herb.")) == first.text
    with pytest.raises(ConfigError, match="urial: unknown variant 'spicy'"):
        tiny_llm(urial="spicy")
    with pytest.raises(ConfigError, match="urial: URIAL prompts cannot carry tools"):
        llm.chat([ChatMessage(role=MessageRole.USER, content="hi")], tools=[{"name": "f"}])
