"""``DeAL`` beyond local weights: a remote completions server, a chat-only endpoint, any LlamaIndex LLM.

Real HTTP servers on 127.0.0.1 (tests/completions_server.py, tests/chat_server.py) answer from the tiny
random model, so a remote run can be compared with the same call run locally. Chat-only runs use real
LLMs (a chat-only HTTP endpoint through OpenAILike, or a DeAL on the tiny model), and the rewards are
real rewards that also record the texts they were asked to score.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chat_server import ChatServer
from completions_server import CompletionsServer
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from llamaindex_deal import DeAL
from shared_core import BackendRequestError
from shared_core.errors import ConfigError
from shared_core.models import LocalModel, load_model
from shared_core.rewards import CallableReward, WeightedReward
from shared_core.urial import default_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

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
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, smollm2: LocalModel, save_tiny_llama) -> str:
    """The tiny random Llama with a 2048-token window (the URIAL prompt needs more than 512)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-li-remote"), smollm2.tokenizer, max_position_embeddings=2048)


@pytest.fixture(scope="module")
def tiny(tiny_dir: str) -> LocalModel:
    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def completions(tiny: LocalModel) -> Iterator[CompletionsServer]:
    with CompletionsServer(tiny, max_model_len=2048) as server:
        yield server


@pytest.fixture(scope="module")
def chat_only(tiny: LocalModel) -> Iterator[ChatServer]:
    with ChatServer(tiny, completions=False) as server:
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
def inner(tiny_dir: str) -> DeAL:
    """A real local LLM standing in for an API-only one: it samples, so the samples differ."""
    return DeAL(model=tiny_dir, strategy="sample", max_new_tokens=8)


# --------------------------------------------------------------------------- settings


def test_backend_settings_are_checked_before_any_network_or_model_work(inner: DeAL) -> None:
    with pytest.raises(ConfigError, match="base_url: must be an http"):
        DeAL(base_url="localhost:8000")
    with pytest.raises(ConfigError, match="chat_model: give either base_url"):
        DeAL(base_url="http://127.0.0.1:9", chat_model=inner)
    with pytest.raises(ConfigError, match="tokenizer: .*needs base_url"):
        DeAL(tokenizer="smollm2")
    with pytest.raises(ConfigError, match="chat_model: must be a LlamaIndex LLM"):
        DeAL(chat_model="gpt-4o")
    with pytest.raises(ConfigError, match="max_retries: must be an integer"):
        DeAL(base_url="http://127.0.0.1:9", max_retries=-1)
    DeAL(base_url="http://127.0.0.1:9", api_key="k", timeout=3)  # nothing is contacted


@pytest.mark.parametrize("strategy", ["genarm", "args", "transfer_q"])
def test_a_logits_strategy_on_a_chat_model_is_a_config_error_naming_it(inner: DeAL, strategy: str) -> None:
    reward = {"type": "keywords", "words": ["a"]}
    with pytest.raises(ConfigError, match=rf"strategy: strategy '{strategy}' needs .* but DeAL is a chat model"):
        DeAL(chat_model=inner, strategy=strategy, reward=reward)
    with pytest.raises(ConfigError, match=rf"strategy '{strategy}' needs"):
        DeAL(chat_model=inner).complete("Hi", strategy=strategy, reward=reward)
    with pytest.raises(ConfigError, match="n: a chat-only model draws at most 16"):
        DeAL(chat_model=inner, reward=reward, strategy_params={"n": 40})


# --------------------------------------------------------------------------- a remote completions server


def test_base_url_decodes_on_the_server_like_the_local_model(completions: CompletionsServer, tiny_dir: str) -> None:
    remote = DeAL(base_url=completions.base_url, model="tiny", tokenizer=tiny_dir, max_new_tokens=6)
    local = DeAL(model=tiny_dir, max_new_tokens=6)
    answer = remote.complete("Name three colours.")
    assert answer.text == local.complete("Name three colours.").text
    info = answer.additional_kwargs
    assert (info["path"], info["reason"], info["model"], info["strategy"]) == ("remote", None, "tiny", "greedy")
    messages = [ChatMessage(role=MessageRole.USER, content="Hello")]
    assert remote.chat(messages).message.content == local.chat(messages).message.content
    meta = remote.metadata
    assert (meta.context_window, meta.model_name, meta.is_function_calling_model) == (2048, "tiny", True)


def test_per_call_rewards_and_strategies_reach_the_server(completions: CompletionsServer, tiny_dir: str) -> None:
    llm = DeAL(base_url=completions.base_url, tokenizer=tiny_dir, max_new_tokens=6)
    answer = llm.complete("Hello", reward={"type": "keywords", "words": ["the"]}, strategy="best_of_n", n=3, seed=1)
    info = answer.additional_kwargs
    assert (info["path"], info["strategy"], info["strategy_params"]["n"]) == ("remote", "best_of_n", 3)
    assert any(r.get("n") == 3 for r in completions.requests)  # n samples in one request


# --------------------------------------------------------------------------- a chat-only endpoint


def test_a_chat_only_endpoint_is_detected_and_answered_through_urial(chat_only: ChatServer) -> None:
    llm = DeAL(base_url=chat_only.base_url, max_new_tokens=6)
    answer = llm.chat([ChatMessage(role=MessageRole.USER, content="How do I keep basil fresh?")])
    info = answer.additional_kwargs
    assert (info["path"], info["reason"], info["strategy"], info["model"]) == ("urial", REASON_ENDPOINT, "greedy",
                                                                               "tiny-chat")
    assert answer.message.content and info["urial"]["n"] == 1
    (request,) = chat_only.chat_requests
    k = len(default_examples("safe"))
    assert [m["role"] for m in request["messages"]] == ["system"] + ["user", "assistant"] * k + ["user"]
    assert request["messages"][-1]["content"] == "How do I keep basil fresh?"
    meta = llm.metadata
    assert (meta.model_name, meta.is_chat_model, meta.is_function_calling_model) == ("tiny-chat", True, False)


def test_a_chat_endpoint_without_a_model_list_needs_the_model_id(tiny: LocalModel) -> None:
    with ChatServer(tiny, completions=False, model_list=False) as server:
        with pytest.raises(BackendRequestError):
            DeAL(base_url=server.base_url).complete("Hi")
        answer = DeAL(base_url=server.base_url, model="tiny-chat", max_new_tokens=4).complete("Hi")
        assert (answer.additional_kwargs["path"], answer.additional_kwargs["model"]) == ("urial", "tiny-chat")


def test_best_of_n_on_a_chat_endpoint_asks_for_n_answers_and_keeps_the_best(chat_only: ChatServer) -> None:
    recorder = Recorder()
    llm = DeAL(base_url=chat_only.base_url, max_new_tokens=8, reward=CallableReward(recorder, name="chars"),
               strategy_params={"n": 3})
    answer = llm.complete("Tell me about the sea.")
    info = answer.additional_kwargs
    assert (info["path"], info["strategy"], info["reason"]) == ("urial+best_of_n", "best_of_n", REASON_ENDPOINT)
    (request,) = chat_only.chat_requests  # the client's own n: one request
    assert request["n"] == 3 and request["temperature"] == 0.8 and request["max_tokens"] == 8
    samples = recorder.samples
    assert samples == [a.strip() for a in chat_only.chat_answers[0]] and len(set(samples)) > 1
    best = max(range(3), key=lambda i: len(samples[i]))
    assert answer.text == samples[best] and info["urial"]["chosen"] == best
    assert info["reward"]["total"] == max(info["stats"]["extra"]["sample_scores"])
    assert answer.raw["answers"] == samples


def test_a_weight_zero_reward_keeps_the_first_sample(chat_only: ChatServer) -> None:
    reward = WeightedReward([(0.0, CallableReward(Recorder(), name="chars"))])
    llm = DeAL(base_url=chat_only.base_url, max_new_tokens=8, reward=reward, strategy_params={"n": 3})
    answer = llm.complete("Tell me about the sea.")
    (samples,) = chat_only.chat_answers
    assert len(set(samples)) > 1 and answer.text == samples[0].strip()
    assert answer.additional_kwargs["urial"]["chosen"] == 0


def test_a_logits_strategy_on_a_chat_endpoint_fails_before_any_chat_request(chat_only: ChatServer) -> None:
    with pytest.raises(ConfigError, match="strategy 'genarm' needs logits .* the endpoint has no completions"):
        DeAL(base_url=chat_only.base_url, strategy="genarm").complete("Hi")
    assert chat_only.chat_requests == []


def test_tools_on_a_chat_only_model_are_a_config_error(chat_only: ChatServer) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(ConfigError, match="tools: a chat-only model"):
        DeAL(base_url=chat_only.base_url).chat([ChatMessage(role=MessageRole.USER, content="Hi")], tools=[tool])


# --------------------------------------------------------------------------- any LlamaIndex LLM


def test_a_configured_llm_keeps_its_settings_unless_the_call_sets_them(chat_only: ChatServer) -> None:
    from llama_index.llms.openai_like import OpenAILike

    client = OpenAILike(api_base=chat_only.base_url + "/v1", model="tiny-chat", api_key="unused", is_chat_model=True,
                        max_tokens=5, temperature=0.3)
    reward = {"type": "keywords", "words": ["sea"]}
    DeAL(chat_model=client, reward=reward, strategy_params={"n": 2}).complete("Tell me about the sea.")
    DeAL(chat_model=client, reward=reward, strategy_params={"n": 2, "temperature": 0.9},
         max_new_tokens=7).complete("Tell me about the sea.")
    own, overridden = chat_only.chat_requests
    budget = [r.get("max_completion_tokens") or r.get("max_tokens") for r in (own, overridden)]
    assert budget == [5, 7] and (own["temperature"], overridden["temperature"]) == (0.3, 0.9)
    assert own["n"] == overridden["n"] == 2  # an OpenAI-compatible client: n choices in one request


def test_any_llm_gets_urial_and_best_of_n_with_the_reward(inner: DeAL) -> None:
    recorder = Recorder()
    llm = DeAL(chat_model=inner, reward=CallableReward(recorder, name="chars"), strategy_params={"n": 4},
               max_new_tokens=8)
    answer = llm.chat([ChatMessage(role=MessageRole.USER, content="Name a colour.")])
    info = answer.additional_kwargs
    assert info["path"] == "urial+best_of_n" and info["reason"].startswith("DeAL is a chat model")
    samples = recorder.samples
    assert len(samples) == 4 and answer.message.content == max(samples, key=len)
    assert info["urial"]["requests"] == 4  # an LLM without an `n` of its own is asked once per sample
    assert answer.raw["usage"]["completion_tokens"] > 0


def test_no_reward_means_plain_urial_with_one_sample(inner: DeAL) -> None:
    info = DeAL(chat_model=inner, max_new_tokens=8).complete("Name a colour.").additional_kwargs
    assert (info["path"], info["strategy"], info["reward"], info["urial"]["n"]) == ("urial", "greedy", None, 1)


def test_policies_arrive_per_call_and_per_instance(inner: DeAL) -> None:
    llm = DeAL(chat_model=inner, max_new_tokens=8)
    info = llm.complete("Name a colour.", policy="concise", n=2).additional_kwargs
    assert (info["path"], info["policy"], info["strategy"], info["urial"]["n"]) == ("urial+best_of_n", "concise",
                                                                                   "best_of_n", 2)
    assert "'deal' needs" in info["reason"] and info["reward"]["components"].keys() == {"length"}
    engine_llm = llm.with_policy("concise")
    assert engine_llm.complete("Name a colour.").additional_kwargs["policy"] == "concise"


async def test_async_and_streaming_calls_take_the_chat_path_too(inner: DeAL) -> None:
    llm = DeAL(chat_model=inner, max_new_tokens=8, reward={"type": "keywords", "words": ["red"]},
               strategy_params={"n": 2})
    answer = await llm.achat([ChatMessage(role=MessageRole.USER, content="Name a colour.")])
    assert answer.additional_kwargs["path"] == "urial+best_of_n"
    chunks = [c async for c in await llm.astream_complete("Name a colour.")]
    assert chunks[-1].additional_kwargs["path"] == "urial+best_of_n" and chunks[-1].text
    (last,) = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content="Name a colour.")]))
    assert last.additional_kwargs["urial"]["n"] == 2


@pytest.mark.embedded
def test_embedded_llm_best_of_n_returns_the_sample_the_reward_likes_most(smollm2: LocalModel) -> None:
    words = ["salt", "water", "boil"]
    batches: list[list[str]] = []

    def pasta(texts: list[str]) -> list[float]:
        batches.append(list(texts))
        return [float(sum(w in t.lower() for w in words)) for t in texts]

    inner = DeAL(model="smollm2", strategy="sample", max_new_tokens=40)
    llm = DeAL(chat_model=inner, reward=CallableReward(pasta, name="pasta"), strategy_params={"n": 3},
               max_new_tokens=40)
    answer = llm.complete("How do I cook pasta?")
    samples = next(b for b in batches if len(b) == 3)
    scores = pasta(samples)
    assert answer.text == samples[max(range(3), key=scores.__getitem__)]
    assert answer.additional_kwargs["reward"]["total"] == max(scores)
