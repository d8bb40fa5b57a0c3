"""ChatDeAL and DeALLLM mechanics on a tiny random model: per-call policies, streaming, async, tools, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel

from langchain_deal import ChatDeAL, DeALLLM
from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.decoding.greedy import GreedyStrategy
from shared_core.errors import ConfigError
from shared_core.policies import register_policy
from shared_core.specs import Policy

# --------------------------------------------------------------------------- a strategy that records


SEEN: list[tuple[str, tuple[str, ...], str]] = []
_SEEN_LOCK = threading.Lock()


@register_strategy
class RecordingStrategy(Strategy):
    """Greedy decoding that records, per request, the reward words the decoder was handed."""

    name = "lc_test_recording"
    needs_reward = True
    Params = GreedyStrategy.Params

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        words = tuple(getattr(job.reward, "words", ()))
        with _SEEN_LOCK:
            SEEN.append((job.prompt_text, words, threading.current_thread().name))
        yield from GreedyStrategy().decode(job)


register_policy("lc-alpha", Policy(reward={"type": "keywords", "words": ["alpha"]}, strategy="lc_test_recording"),
                overwrite=True)
register_policy("lc-beta", Policy(reward={"type": "keywords", "words": ["beta"]}, strategy="lc_test_recording"),
                overwrite=True)


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    SEEN.clear()


def seen_words(prompt: str) -> list[tuple[str, ...]]:
    return [words for text, words, _ in SEEN if text == prompt]


@pytest.fixture
def llm(tiny_lc_dir: str, tiny_lc: Any) -> ChatDeAL:
    return ChatDeAL(model=tiny_lc_dir, max_tokens=6, tool_call_max_tokens=64)


# --------------------------------------------------------------------------- construction and bad input


def test_construction_loads_no_model_and_keeps_strategy_params() -> None:
    llm = ChatDeAL(model="/no/such/model", strategy="sample", top_k=20, api_key="ignored", timeout=3)
    assert llm.strategy_params == {"top_k": 20}  # unknown keywords are the strategy's; client params ignored


def test_unknown_strategy_policy_and_params_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="strategy: unknown strategy 'nope'; registered strategies: .*greedy"):
        ChatDeAL(strategy="nope")
    with pytest.raises(ConfigError, match="policy: unknown policy 'nope'; registered policies: .*strict"):
        ChatDeAL(policy="nope")
    with pytest.raises(ConfigError, match="params.top_q: not a parameter of strategy 'sample'; valid parameters: "
                                          ".*temperature, top_k, top_p"):
        ChatDeAL(strategy="sample", top_q=0.5)
    with pytest.raises(ConfigError, match="max_tokens: must be a positive integer"):
        ChatDeAL(max_tokens=0)


def test_invalid_reward_spec_reports_the_pydantic_message() -> None:
    with pytest.raises(ConfigError, match=r"reward\.components\[0\]\.weight: weight must be >= 0, got -1"):
        ChatDeAL(reward={"type": "weighted", "components": [{"weight": -1, "reward": {"type": "safety"}}]})
    with pytest.raises(ConfigError, match=r"reward\.type: unknown reward type 'kw'; valid types: keywords"):
        ChatDeAL(reward='{"type": "kw"}')
    with pytest.raises(ConfigError, match="reward: unknown policy 'no-such-policy'"):
        ChatDeAL(reward="no-such-policy")


def test_bad_per_call_settings_fail_before_model_work(llm: ChatDeAL) -> None:
    with pytest.raises(ConfigError, match="policy: unknown policy 'nope'"):
        ChatDeAL(model="/no/such/model").invoke("hi", policy="nope")
    with pytest.raises(ConfigError, match="strategy: unknown strategy"):
        llm.bind(strategy="nope").invoke("hi")
    with pytest.raises(ConfigError, match=r"reward\.max_words"):
        llm.invoke("hi", reward={"type": "length", "max_words": -3})


def test_tools_that_cannot_be_converted(llm: ChatDeAL) -> None:
    with pytest.raises(ConfigError, match=r"tools\[1\]: cannot be converted to a tool schema"):
        llm.bind_tools([{"type": "function", "function": {"name": "ok"}}, 42])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="tool_choice: no tool named 'other'"):
        llm.bind_tools([{"type": "function", "function": {"name": "ok"}}], tool_choice="other")


# --------------------------------------------------------------------------- invoke / stream / async


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_stream_and_invoke_give_the_same_message(llm: ChatDeAL) -> None:
    handler = _Tokens()
    message = llm.invoke("Hello", config={"callbacks": [handler]})
    chunks = list(llm.stream("Hello"))
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert chunks[-1].chunk_position == "last" and len(chunks) >= 2
    assert full.content == message.content and message.content
    assert full.usage_metadata == message.usage_metadata
    assert message.usage_metadata["output_tokens"] == 6 and message.usage_metadata["input_tokens"] > 0
    assert "".join(handler.tokens) == message.content and len(handler.tokens) >= 2  # every token reached callbacks
    meta = message.response_metadata
    assert meta["model_provider"] == "deal" and meta["strategy"] == "greedy" and meta["finish_reason"] == "length"
    assert meta["stats"]["forward_passes"]["policy"] >= 1
    assert llm._get_ls_params(stop=["x"]) == {"ls_provider": "deal", "ls_model_name": llm.model,
                                               "ls_model_type": "chat", "ls_max_tokens": 6, "ls_stop": ["x"]}


def test_reward_breakdown_in_metadata(llm: ChatDeAL) -> None:
    message = llm.invoke("Hello", policy="lc-alpha")
    meta = message.response_metadata
    assert meta["policy"] == "lc-alpha" and meta["strategy"] == "lc_test_recording"
    assert meta["reward"]["total"] == pytest.approx(meta["reward"]["components"]["keywords"])
    # the policy's reward, as the spec it was built from (docs/metadata.md)
    assert meta["reward_spec"] == {"type": "keywords", "words": ["alpha"], "forbidden": [], "forbidden_penalty": 1.0}
    assert meta["chosen_by"] == "policy" and meta["reward_error"] is None


async def test_async_runs_off_the_event_loop(llm: ChatDeAL) -> None:
    llm.invoke("warm up")
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    message = await llm.ainvoke("Hello", max_tokens=24)
    chunks = [c async for c in llm.astream("Hello", max_tokens=24)]
    stop.set()
    await task
    assert message.content and chunks[-1].chunk_position == "last"
    assert ticks > 5  # the loop kept running while the model decoded in a worker thread


def test_invoke_kwargs_and_bind_override_instance(llm: ChatDeAL) -> None:
    aligned = ChatDeAL(model=llm.model, max_tokens=4, policy="lc-alpha")
    aligned.invoke("p1")
    aligned.invoke("p2", policy="lc-beta")
    aligned.bind(reward={"type": "keywords", "words": ["gamma"]}).invoke("p3")
    assert seen_words("p1") == [("alpha",)] and seen_words("p2") == [("beta",)] and seen_words("p3") == [("gamma",)]


def test_seeded_sampling_is_reproducible(llm: ChatDeAL) -> None:
    a = llm.invoke("Hello", temperature=1.0, seed=7).content
    b = llm.invoke("Hello", temperature=1.0, seed=7).content
    assert a == b and llm.invoke("Hello", temperature=1.0, seed=7).response_metadata["strategy"] == "sample"


# --------------------------------------------------------------------------- per-chain policies


PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])


def test_with_config_policy_reaches_the_decoder_in_an_lcel_chain(llm: ChatDeAL) -> None:
    chain = PROMPT | llm.configurable_deal() | StrOutputParser()
    chain.with_config(configurable={"deal_policy": "lc-alpha"}).invoke({"q": "q-alpha"})
    chain.with_config(configurable={"deal_policy": "lc-beta"}).invoke({"q": "q-beta"})
    chain.invoke({"q": "q-plain"}, config={"configurable": {"deal_reward": {"type": "keywords", "words": ["w"]},
                                                            "deal_strategy": "lc_test_recording"}})
    assert seen_words("q-alpha") == [("alpha",)]
    assert seen_words("q-beta") == [("beta",)]
    assert seen_words("q-plain") == [("w",)]


def test_with_config_policy_reaches_the_decoder_in_a_langgraph_node(llm: ChatDeAL) -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph

    model = llm.configurable_deal()

    def call_model(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}  # config flows in from the graph

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    graph = builder.compile()
    out = graph.invoke({"messages": [HumanMessage("graph-q")]}, config={"configurable": {"deal_policy": "lc-beta"}})
    assert seen_words("graph-q") == [("beta",)]
    assert out["messages"][-1].response_metadata["policy"] == "lc-beta"


async def test_two_chains_keep_their_policies_under_concurrent_abatch(llm: ChatDeAL) -> None:
    base = PROMPT | llm.configurable_deal() | StrOutputParser()
    chain_a = base.with_config(configurable={"deal_policy": "lc-alpha"})
    chain_b = base.with_config(configurable={"deal_policy": "lc-beta"})
    inputs_a = [{"q": f"A-{i}"} for i in range(4)]
    inputs_b = [{"q": f"B-{i}"} for i in range(4)]
    await asyncio.gather(chain_a.abatch(inputs_a, config={"max_concurrency": 2}),
                         chain_b.abatch(inputs_b, config={"max_concurrency": 2}))
    for i in range(4):
        assert seen_words(f"A-{i}") == [("alpha",)]
        assert seen_words(f"B-{i}") == [("beta",)]
    assert len({thread for _, _, thread in SEEN}) > 1  # they really ran concurrently in worker threads


def test_batch_with_max_concurrency(llm: ChatDeAL) -> None:
    results = llm.batch(["one", "two", "three"], config={"max_concurrency": 2}, policy="lc-alpha")
    assert len(results) == 3 and all(r.response_metadata["policy"] == "lc-alpha" for r in results)


# --------------------------------------------------------------------------- tools


class Address(BaseModel):
    street: str
    city: str


class CreateCustomer(BaseModel):
    """Create a customer record."""

    name: str
    address: Address
    vip: bool


def test_forced_tool_call_streams_as_tool_call_chunks(llm: ChatDeAL) -> None:
    bound = llm.bind_tools([CreateCustomer], tool_choice="CreateCustomer")
    message = bound.invoke("Add Ada Lovelace, 12 Main St, London")
    chunks = list(bound.stream("Add Ada Lovelace, 12 Main St, London"))
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    for msg in (message, full):
        assert len(msg.tool_calls) == 1 and msg.tool_calls[0]["name"] == "CreateCustomer"
        CreateCustomer.model_validate(msg.tool_calls[0]["args"])
    assert chunks[-1].tool_call_chunks and chunks[-1].chunk_position == "last"
    assert message.response_metadata["strategy"] == "tool_call"


def test_structured_output_pydantic_and_json_schema(llm: ChatDeAL) -> None:
    parsed = llm.with_structured_output(CreateCustomer).invoke("Add Ada")
    assert isinstance(parsed, CreateCustomer)
    raw = llm.with_structured_output(CreateCustomer.model_json_schema(), include_raw=True).invoke("Add Ada")
    assert raw["parsing_error"] is None and set(raw["parsed"]) == {"name", "address", "vip"}


def test_tool_history_is_accepted(llm: ChatDeAL) -> None:
    bound = llm.bind_tools([CreateCustomer])
    history = [
        SystemMessage("You manage customers."),
        HumanMessage("Add Ada"),
        AIMessage("", tool_calls=[{"name": "CreateCustomer", "id": "c1", "args": {
            "name": "Ada", "address": {"street": "1 Main", "city": "London"}, "vip": True}}]),
        ToolMessage("created", tool_call_id="c1", name="CreateCustomer"),
    ]
    assert isinstance(bound.invoke(history), AIMessage)


def test_unsupported_content_blocks_are_rejected(llm: ChatDeAL) -> None:
    image = HumanMessage(content=[{"type": "image", "url": "https://example.com/cat.png"}])
    with pytest.raises(ConfigError, match=r"messages\[0\]\.content\[0\]: content blocks of type 'image'"):
        llm.invoke([image])


# --------------------------------------------------------------------------- DeALLLM


def test_deal_llm_stream_invoke_and_metadata(tiny_lc_dir: str, tiny_lc: Any) -> None:
    llm = DeALLLM(model=tiny_lc_dir, max_tokens=5, chat=False)
    text = llm.invoke("Once upon a time")
    assert "".join(llm.stream("Once upon a time")) == text
    result = llm.generate(["Once upon a time"], policy="lc-alpha")
    info = result.generations[0][0].generation_info
    assert info["policy"] == "lc-alpha" and info["usage_metadata"]["output_tokens"] == 5
    assert seen_words("Once upon a time") == [("alpha",)]
    with pytest.raises(ConfigError, match="strategy: unknown strategy"):
        DeALLLM(strategy="nope")


async def test_deal_llm_async(tiny_lc_dir: str, tiny_lc: Any) -> None:
    llm = DeALLLM(model=tiny_lc_dir, max_tokens=4, chat=False)
    assert await llm.ainvoke("Hello") == llm.invoke("Hello")
    started = time.perf_counter()
    results = await llm.abatch(["a", "b"])
    assert len(results) == 2 and time.perf_counter() - started < 60
