"""ChatDeAL and DeALLLM beyond local weights: a remote completions server, a chat-only endpoint, any chat model.

Real HTTP servers on 127.0.0.1 (tests/completions_server.py, tests/chat_server.py) answer from the tiny
random model, so a remote run can be compared with the same call run locally. Chat-only runs use real
chat models (a chat-only HTTP endpoint through ChatOpenAI, or a ChatDeAL on the tiny model), and the
rewards are real rewards that also record the texts they were asked to score.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from chat_server import ChatServer
from completions_server import CompletionsServer
from langchain_core.messages import AIMessage

from langchain_deal import ChatDeAL, DeALLLM
from shared_core import BackendRequestError
from shared_core.errors import ConfigError
from shared_core.models import LocalModel
from shared_core.rewards import CallableReward, WeightedReward
from shared_core.urial import default_examples

REASON_ENDPOINT = "the endpoint has no completions/logprobs"


class Recorder:
    """A real reward function (characters in the text) that keeps every batch it scored."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[float]:
        self.batches.append(list(texts))
        return [float(len(t)) for t in texts]

    @property
    def samples(self) -> list[str]:
        """The batch of samples (the first batch with more than one text)."""
        return next(b for b in self.batches if len(b) > 1)


@pytest.fixture(scope="module")
def completions(tiny_lc: LocalModel) -> Iterator[CompletionsServer]:
    with CompletionsServer(tiny_lc, max_model_len=2048) as server:
        yield server


@pytest.fixture(scope="module")
def chat_only(tiny_lc: LocalModel) -> Iterator[ChatServer]:
    with ChatServer(tiny_lc, completions=False) as server:
        yield server


@pytest.fixture(autouse=True)
def _clear(request: pytest.FixtureRequest) -> None:
    for name in ("completions", "chat_only"):
        if name in request.fixturenames:
            server = request.getfixturevalue(name)
            server.requests.clear()
            getattr(server, "chat_requests", []).clear()
            getattr(server, "chat_answers", []).clear()


@pytest.fixture
def inner(tiny_lc_dir: str) -> ChatDeAL:
    """A real local chat model standing in for an API-only one: it samples, so seeded samples differ."""
    return ChatDeAL(model=tiny_lc_dir, strategy="sample", max_tokens=8)


# --------------------------------------------------------------------------- settings


def test_backend_settings_are_checked_before_any_network_or_model_work(inner: ChatDeAL) -> None:
    with pytest.raises(ConfigError, match="base_url: must be an http"):
        ChatDeAL(base_url="localhost:8000")
    with pytest.raises(ConfigError, match="chat_model: give either base_url"):
        ChatDeAL(base_url="http://127.0.0.1:9", chat_model=inner)
    with pytest.raises(ConfigError, match="tokenizer: .*needs base_url"):
        ChatDeAL(tokenizer="smollm2")
    with pytest.raises(ConfigError, match="chat_model: must be a LangChain chat model"):
        ChatDeAL(chat_model="gpt-4o")
    with pytest.raises(ConfigError, match="timeout: must be a number of seconds"):
        ChatDeAL(base_url="http://127.0.0.1:9", timeout=0)
    ChatDeAL(base_url="http://127.0.0.1:9", api_key="k", timeout=3, max_retries=0)  # nothing is contacted


@pytest.mark.parametrize("strategy", ["genarm", "args", "deal"])
def test_a_logits_strategy_on_a_chat_model_is_a_config_error_naming_it(inner: ChatDeAL, strategy: str) -> None:
    with pytest.raises(ConfigError, match=rf"strategy: strategy '{strategy}' needs .* but ChatDeAL is a chat model"):
        ChatDeAL(chat_model=inner, strategy=strategy, reward={"type": "keywords", "words": ["a"]})
    llm = ChatDeAL(chat_model=inner)
    with pytest.raises(ConfigError, match=rf"strategy '{strategy}' needs"):
        llm.invoke("Hi", strategy=strategy, reward={"type": "keywords", "words": ["a"]})
    with pytest.raises(ConfigError, match="n: a chat-only model draws at most 16"):
        ChatDeAL(chat_model=inner, strategy="best_of_n", n=17, reward={"type": "keywords", "words": ["a"]})
    with pytest.raises(ConfigError, match="tools: a chat-only model"):
        llm.invoke("Hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])


# --------------------------------------------------------------------------- a remote completions server


def test_base_url_decodes_on_the_server_like_the_local_model(completions: CompletionsServer, tiny_lc_dir: str) -> None:
    remote = ChatDeAL(base_url=completions.base_url, model="tiny", tokenizer=tiny_lc_dir, max_tokens=6)
    local = ChatDeAL(model=tiny_lc_dir, max_tokens=6)
    answer = remote.invoke("Name three colours.")
    assert answer.content == local.invoke("Name three colours.").content
    meta = answer.response_metadata
    assert (meta["path"], meta["reason"], meta["model"], meta["strategy"]) == ("remote", None, "tiny", "greedy")
    generated = [r for r in completions.requests if r.get("prompt") and isinstance(r["prompt"], list)]
    assert generated and all(isinstance(t, int) for t in generated[0]["prompt"])  # token-id prompts
    text = DeALLLM(base_url=completions.base_url + "/v1", tokenizer=tiny_lc_dir, max_tokens=6).invoke("Hello")
    assert text == DeALLLM(model=tiny_lc_dir, max_tokens=6).invoke("Hello")


def test_rewards_and_strategies_reach_the_server_through_bind(completions: CompletionsServer, tiny_lc_dir: str) -> None:
    llm = ChatDeAL(base_url=completions.base_url, tokenizer=tiny_lc_dir, max_tokens=6)
    bound = llm.bind(reward={"type": "keywords", "words": ["the"]}, strategy="best_of_n", n=3, seed=1)
    meta = bound.invoke("Hello").response_metadata
    assert (meta["path"], meta["strategy"], meta["strategy_params"]["n"]) == ("remote", "best_of_n", 3)
    assert meta["reward"]["components"].keys() == {"keywords"}
    assert any(r.get("n") == 3 for r in completions.requests)  # n samples in one request


# --------------------------------------------------------------------------- a chat-only endpoint


def test_a_chat_only_endpoint_is_detected_and_answered_through_urial(chat_only: ChatServer) -> None:
    llm = ChatDeAL(base_url=chat_only.base_url, max_tokens=6)
    answer = llm.invoke("How do I keep basil fresh?")
    meta = answer.response_metadata
    assert (meta["path"], meta["reason"], meta["strategy"], meta["model"]) == ("urial", REASON_ENDPOINT, "greedy",
                                                                               "tiny-chat")
    assert answer.content and meta["urial"]["n"] == 1
    assert len(chat_only.chat_requests) == 1
    sent = chat_only.chat_requests[0]["messages"]
    k = len(default_examples("safe"))
    assert [m["role"] for m in sent] == ["system"] + ["user", "assistant"] * k + ["user"]
    assert sent[-1]["content"] == "How do I keep basil fresh?" and "# Query" not in sent[0]["content"]
    chunks = list(llm.stream("How do I keep basil fresh?"))
    assert len([c for c in chunks if c.content]) > 1  # one answer streams through the chat endpoint
    assert chunks[-1].response_metadata["path"] == "urial"


def test_a_chat_endpoint_without_a_model_list_needs_the_model_id(tiny_lc: LocalModel) -> None:
    with ChatServer(tiny_lc, completions=False, model_list=False) as server:
        with pytest.raises(BackendRequestError):
            ChatDeAL(base_url=server.base_url).invoke("Hi")
        answer = ChatDeAL(base_url=server.base_url, model="tiny-chat", max_tokens=4).invoke("Hi")
        assert (answer.response_metadata["path"], answer.response_metadata["model"]) == ("urial", "tiny-chat")


def test_best_of_n_on_a_chat_endpoint_asks_for_n_answers_and_keeps_the_best(chat_only: ChatServer) -> None:
    recorder = Recorder()
    llm = ChatDeAL(base_url=chat_only.base_url, max_tokens=8, reward=CallableReward(recorder, name="chars"), n=3)
    answer = llm.invoke("Tell me about the sea.")
    meta = answer.response_metadata
    assert (meta["path"], meta["strategy"]) == ("urial+best_of_n", "best_of_n")
    assert meta["reason"] == REASON_ENDPOINT  # a judge reward's default strategy is best_of_n already
    assert len(chat_only.chat_requests) == 1 and chat_only.chat_requests[0]["n"] == 3  # the endpoint's own n
    assert chat_only.chat_requests[0]["temperature"] == 0.8
    samples = recorder.samples
    assert len(samples) == 3 and len(set(samples)) > 1
    best = max(range(3), key=lambda i: len(samples[i]))
    assert answer.content == samples[best] and meta["urial"]["chosen"] == best
    assert meta["reward"]["total"] == float(len(samples[best])) == max(meta["stats"]["extra"]["sample_scores"])


def test_a_weight_zero_reward_keeps_the_first_sample(chat_only: ChatServer) -> None:
    reward = WeightedReward([(0.0, CallableReward(Recorder(), name="chars"))])
    answer = ChatDeAL(base_url=chat_only.base_url, max_tokens=8, reward=reward, n=3).invoke("Tell me about the sea.")
    (samples,) = chat_only.chat_answers  # one request, three choices
    assert len(samples) == 3 and len(set(samples)) > 1  # the samples differ, yet all score 0
    assert answer.content == samples[0] and answer.response_metadata["urial"]["chosen"] == 0
    assert answer.response_metadata["stats"]["extra"]["sample_scores"] == [0.0, 0.0, 0.0]


def test_a_logits_strategy_on_a_chat_endpoint_fails_before_any_chat_request(chat_only: ChatServer) -> None:
    llm = ChatDeAL(base_url=chat_only.base_url, strategy="genarm")
    with pytest.raises(ConfigError, match="strategy 'genarm' needs logits .* the endpoint has no completions"):
        llm.invoke("Hi")
    assert chat_only.chat_requests == []


def test_the_planned_strategy_of_a_reward_is_replaced_and_the_reason_says_so(chat_only: ChatServer) -> None:
    llm = DeALLLM(base_url=chat_only.base_url, max_tokens=6, reward={"type": "keywords", "words": ["sea"]}, n=2)
    result = llm.generate(["Tell me about the sea."])
    info = result.generations[0][0].generation_info
    assert info is not None and info["path"] == "urial+best_of_n"
    assert info["reason"].startswith(REASON_ENDPOINT) and "'deal' needs" in info["reason"]
    assert info["stats"]["extra"]["planned_strategy"] == "deal" and info["chosen_by"] == "reward"


# --------------------------------------------------------------------------- any LangChain chat model


def test_a_configured_chat_model_keeps_its_settings_unless_the_call_sets_them(chat_only: ChatServer) -> None:
    from langchain_openai import ChatOpenAI

    client = ChatOpenAI(base_url=chat_only.base_url + "/v1", model="tiny-chat", api_key="unused", max_tokens=5,
                        temperature=0.3)
    reward = {"type": "keywords", "words": ["sea"]}
    ChatDeAL(chat_model=client, reward=reward, n=2).invoke("Tell me about the sea.")
    ChatDeAL(chat_model=client, reward=reward, n=2, max_tokens=7, temperature=0.9).invoke("Tell me about the sea.")
    own, overridden = chat_only.chat_requests
    budget = [r.get("max_completion_tokens") or r.get("max_tokens") for r in (own, overridden)]
    assert budget == [5, 7] and (own["temperature"], overridden["temperature"]) == (0.3, 0.9)
    assert own["n"] == overridden["n"] == 2


def test_any_chat_model_gets_urial_and_best_of_n_with_the_reward(inner: ChatDeAL) -> None:
    recorder = Recorder()
    llm = ChatDeAL(chat_model=inner, reward=CallableReward(recorder, name="chars"), n=4, max_tokens=8)
    answer = llm.invoke("Name a colour.")
    meta = answer.response_metadata
    assert meta["path"] == "urial+best_of_n" and meta["reason"].startswith("ChatDeAL is a chat model")
    samples = recorder.samples
    assert len(samples) == 4 and answer.content == max(samples, key=len)
    assert meta["urial"]["requests"] == 4  # a model without its own `n` is asked once per sample
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0


def test_no_reward_means_plain_urial_with_one_sample(inner: ChatDeAL) -> None:
    answer = ChatDeAL(chat_model=inner, max_tokens=8).invoke("Name a colour.")
    meta = answer.response_metadata
    assert (meta["path"], meta["strategy"], meta["reward"], meta["urial"]["n"]) == ("urial", "greedy", None, 1)


def test_policies_arrive_through_configurable_fields_and_bind(inner: ChatDeAL) -> None:
    llm = ChatDeAL(chat_model=inner, max_tokens=8).configurable_deal()
    configured = llm.with_config(configurable={"deal_policy": "concise"}).invoke("Name a colour.")
    meta = configured.response_metadata
    assert (meta["path"], meta["policy"], meta["strategy"]) == ("urial+best_of_n", "concise", "best_of_n")
    assert meta["reward"]["components"].keys() == {"length"}
    bound = ChatDeAL(chat_model=inner, max_tokens=8).bind(reward={"type": "keywords", "words": ["red"]}, n=2)
    assert bound.invoke("Name a colour.").response_metadata["urial"]["n"] == 2


async def test_async_calls_take_the_chat_path_too(inner: ChatDeAL) -> None:
    llm = ChatDeAL(chat_model=inner, max_tokens=8, reward={"type": "keywords", "words": ["red"]}, n=2)
    answer = await llm.ainvoke("Name a colour.")
    assert isinstance(answer, AIMessage) and answer.response_metadata["path"] == "urial+best_of_n"
    chunks = [c async for c in llm.astream("Name a colour.")]
    assert chunks[-1].response_metadata["path"] == "urial+best_of_n"


@pytest.mark.embedded
def test_embedded_chat_model_best_of_n_returns_the_sample_the_reward_likes_most(smollm2: Any) -> None:
    recorder_words = ["salt", "water", "boil"]
    batches: list[list[str]] = []

    def keywords(texts: list[str]) -> list[float]:
        batches.append(list(texts))
        return [float(sum(w in t.lower() for w in recorder_words)) for t in texts]

    inner = ChatDeAL(model="smollm2", strategy="sample", max_tokens=40)
    llm = ChatDeAL(chat_model=inner, reward=CallableReward(keywords, name="pasta"), n=3, max_tokens=40)
    answer = llm.invoke("How do I cook pasta?")
    samples = next(b for b in batches if len(b) == 3)
    scores = keywords(samples)
    assert answer.content == samples[max(range(3), key=scores.__getitem__)]
    assert answer.response_metadata["reward"]["total"] == max(scores)
