"""LangChain's ChatOpenAI and LlamaIndex's OpenAILike against a live ``deal serve`` (tiny random model)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Person(BaseModel):
    """A person."""

    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=120)


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


@pytest.fixture(scope="module")
def chat_openai(tiny_url: str):  # type: ignore[no-untyped-def]
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=tiny_url + "/v1", api_key="unused", model="tiny", max_tokens=40, max_retries=0,
                      timeout=60)


def test_langchain_invoke_carries_deal_metadata(chat_openai) -> None:  # type: ignore[no-untyped-def]
    message = chat_openai.invoke("Say hi.")
    assert isinstance(message.content, str) and message.content
    assert message.usage_metadata["output_tokens"] > 0
    aligned = chat_openai.bind(extra_body={"deal": {"policy": "brief"}}).invoke("Say hi.")
    assert aligned.response_metadata["model_name"] == "tiny"


def test_langchain_stream_adds_up_to_invoke(chat_openai) -> None:  # type: ignore[no-untyped-def]
    full = chat_openai.invoke("Tell me a story.")
    pieces = [chunk.content for chunk in chat_openai.stream("Tell me a story.")]
    assert "".join(pieces) == full.content and len([p for p in pieces if p]) > 1


def test_langchain_bind_tools_forced_call(chat_openai) -> None:  # type: ignore[no-untyped-def]
    message = chat_openai.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert set(message.tool_calls[0]["args"]) == {"city"}
    chunks = list(chat_openai.bind_tools([get_weather], tool_choice="any").stream("Weather in Paris?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.tool_calls and merged.tool_calls[0]["name"] == "get_weather"


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(chat_openai, method: str) -> None:  # type: ignore[no-untyped-def]
    structured = chat_openai.with_structured_output(Person if method != "json_mode" else None, method=method,
                                                    include_raw=method == "json_mode")
    out = structured.invoke("Invent a person.")
    if method == "json_mode":
        assert isinstance(out["parsed"], dict)
        return
    assert isinstance(out, Person) and len(out.name) <= 10 and 0 <= out.age <= 120


def test_llamaindex_openai_like_complete_chat_and_stream(tiny_url: str) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model="tiny:brief", api_base=tiny_url + "/v1", api_key="unused", is_chat_model=True,
                     max_tokens=8, temperature=0.0, max_retries=0, timeout=60)
    reply = llm.chat([ChatMessage(role="user", content="Say hi.")])
    assert reply.message.content
    deal = reply.raw.model_extra["deal"]
    assert deal["policy"] == "brief" and deal["reward"] is not None
    streamed = "".join(r.delta or "" for r in llm.stream_chat([ChatMessage(role="user", content="Say hi.")]))
    assert streamed == reply.message.content
    text_llm = OpenAILike(model="tiny", api_base=tiny_url + "/v1", api_key="unused", is_chat_model=False,
                          max_tokens=5, temperature=0.0, max_retries=0, timeout=60)
    assert text_llm.complete("The sky is").text
