"""URIALChatModel around a fake chat model (what it sends, reranking, metadata) and around ChatDeAL."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from langchain_deal import ChatDeAL, URIALChatModel
from shared_core.errors import ConfigError
from shared_core.urial import URIAL_STOP_STRINGS, default_examples


class RecordingChat(BaseChatModel):
    """Answers from a fixed cycle of replies and records every prompt and stop list it was sent."""

    replies: list[str]
    _calls: list[tuple[list[BaseMessage], Any]] = PrivateAttr(default_factory=list)
    _cycle: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        if self._cycle is None:
            self._cycle = itertools.cycle(self.replies)
        self._calls.append((messages, stop))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(next(self._cycle)))])


def test_chat_format_sends_preamble_and_examples_as_turns() -> None:
    inner = RecordingChat(replies=["Use a password manager."])
    model = URIALChatModel(llm=inner, variant="safe")
    answer = model.invoke([SystemMessage("Answer in English."), HumanMessage("How do I stay safe online?")])
    sent, _ = inner._calls[0]
    k = len(default_examples("safe"))
    assert isinstance(sent[0], SystemMessage) and "Answer in English." in sent[0].content
    assert [type(m) for m in sent[1:]] == [HumanMessage, AIMessage] * k + [HumanMessage]
    assert sent[-1].content == "How do I stay safe online?"
    assert answer.content == "Use a password manager."
    assert answer.response_metadata["urial"] == {"variant": "safe", "prompt_format": "chat", "examples": k, "n": 1,
                                                 "scores": None, "chosen": 0}


def test_text_format_sends_one_prompt_stops_and_parses() -> None:
    inner = RecordingChat(replies=["Boil it for 8 minutes.\n```\n\n# Query:\n```next"])
    model = URIALChatModel(llm=inner, prompt_format="text", examples=[("2 + 2?", "4.")])
    answer = model.invoke("How do I boil an egg?")
    sent, stop = inner._calls[0]
    assert len(sent) == 1 and sent[0].content.endswith("# Answer:\n```\n")
    assert set(URIAL_STOP_STRINGS) <= set(stop)
    assert answer.content == "Boil it for 8 minutes."
    assert answer.response_metadata["urial"]["variant"] == "custom"


def test_reward_reranking_picks_the_best_of_n() -> None:
    inner = RecordingChat(replies=["I like turtles.", "Rinse the rice, then simmer it.", "Rice."])
    model = URIALChatModel(llm=inner, reward={"type": "keywords", "words": ["rinse", "simmer"]}, n=3)
    answer = model.invoke("How do I cook rice?")
    report = answer.response_metadata["urial"]
    assert len(inner._calls) == 3 and report["n"] == 3
    assert answer.content == "Rinse the rice, then simmer it." and report["chosen"] == 1
    assert report["scores"][1] == max(report["scores"]) > report["scores"][0]


async def test_async_and_stream_delegate_to_the_wrapped_model() -> None:
    inner = GenericFakeChatModel(messages=iter(["Hello there friend", "Second answer"]))
    model = URIALChatModel(llm=inner)
    chunks = list(model.stream("Hi"))
    assert "".join(c.text for c in chunks) == "Hello there friend" and chunks[-1].chunk_position == "last"
    assert chunks[-1].response_metadata["urial"]["n"] == 1
    assert (await model.ainvoke("Hi")).content == "Second answer"


def test_bad_settings() -> None:
    inner = RecordingChat(replies=["x"])
    with pytest.raises(ConfigError, match="n: reranking 3 samples needs a reward"):
        URIALChatModel(llm=inner, n=3)
    with pytest.raises(ConfigError, match=r"reward\.type: unknown reward type"):
        URIALChatModel(llm=inner, reward={"type": "nope"})
    with pytest.raises(ConfigError, match="examples"):
        URIALChatModel(llm=inner, examples=[{"query": "only a query"}])


def test_wraps_chat_deal(tiny_lc_dir: str, tiny_lc: Any) -> None:
    model = URIALChatModel(llm=ChatDeAL(model=tiny_lc_dir, max_tokens=4, temperature=1.0),
                           reward={"type": "length", "max_words": 3}, n=2)
    answer = model.invoke("Say hi")
    report = answer.response_metadata["urial"]
    assert report["n"] == 2 and len(report["scores"]) == 2
    assert answer.response_metadata["model_provider"] == "deal" and answer.usage_metadata["output_tokens"] <= 4


# ---------------------------------------------------------------------------------------- reranking off the loop, seeds


class SeedRecordingChat(RecordingChat):
    """A RecordingChat that also records the ``seed`` each call received (``None`` when none was passed)."""

    _seeds: list[Any] = PrivateAttr(default_factory=list)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self._seeds.append(kwargs.get("seed"))
        return super()._generate(messages, stop, run_manager, **kwargs)


class SeededChat(SeedRecordingChat):
    """A chat model with a ``seed`` field, as ChatOpenAI and ChatDeAL have."""

    seed: int | None = None


async def test_reranking_never_runs_the_reward_on_the_event_loop() -> None:
    import asyncio

    on_loop: list[bool] = []

    def judge(texts: list[str]) -> list[float]:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return [float(len(t)) for t in texts]

    model = URIALChatModel(llm=RecordingChat(replies=["Short.", "A longer answer."]), reward=judge, n=2)
    answer = await model.ainvoke("Hi")
    assert answer.content == "A longer answer."
    chunks = [chunk async for chunk in model.astream("Hi")]
    assert chunks[-1].response_metadata["urial"]["chosen"] == 1
    assert on_loop == [False, False]


@pytest.mark.parametrize("use_async", [False, True])
async def test_each_sample_gets_its_own_seed(use_async: bool) -> None:
    def run(model: URIALChatModel, **kwargs: Any) -> Any:
        return model.ainvoke("Hi", **kwargs) if use_async else _done(model.invoke("Hi", **kwargs))

    reward = {"type": "length", "max_words": 3}
    inner = SeedRecordingChat(replies=["a", "b", "c"])
    await run(URIALChatModel(llm=inner, reward=reward, n=3), seed=7)
    assert sorted(inner._seeds) == [7, 8, 9]
    seeded = SeededChat(replies=["a", "b", "c"], seed=5)
    await run(URIALChatModel(llm=seeded, reward=reward, n=3))
    assert sorted(seeded._seeds) == [5, 6, 7]
    unseeded = SeedRecordingChat(replies=["a", "b", "c"])  # no seed field, no seed given: none is made up
    await run(URIALChatModel(llm=unseeded, reward=reward, n=3))
    assert unseeded._seeds == [None, None, None]


async def _done(value: Any) -> Any:
    return value


def test_seeded_chat_deal_samples_differ_and_repeat(tiny_lc_dir: str, tiny_lc: Any) -> None:
    seen: list[list[str]] = []

    def record(texts: list[str]) -> list[float]:
        seen.append(list(texts))
        return [0.0] * len(texts)

    model = URIALChatModel(llm=ChatDeAL(model=tiny_lc_dir, max_tokens=6, temperature=1.0, seed=3),
                           reward=record, n=3)
    model.invoke("Say hi")
    model.invoke("Say hi")
    assert len(set(seen[0])) == 3  # three seeds, three different samples
    assert seen[0] == seen[1]  # and the same three again
