"""DeAL in query engines: answers carry their policy's reward, per engine; MiniLM embeddings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding

from llamaindex_deal import DeAL, MiniLMEmbedding
from shared_core.policies import build_reward

if TYPE_CHECKING:
    from conftest import PolicyNames

DOCS = [
    Document(text="Basil grows best in warm sun and moist, well-drained soil."),
    Document(text="Rosemary prefers dry, sandy soil and little water."),
    Document(text="Mint spreads quickly; grow it in a pot to contain it."),
]


@pytest.fixture(scope="module")
def minilm_index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(DOCS, embed_model=MiniLMEmbedding())


@pytest.fixture(scope="module")
def mock_index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(DOCS, embed_model=MockEmbedding(embed_dim=8))


def _expected(spec_or_policy: object, text: str, query: str) -> float:
    reward = build_reward(spec_or_policy)
    assert reward is not None
    return reward.score([text], prompt=query)[0]


def test_minilm_embeddings_are_unit_vectors_that_rank_by_meaning() -> None:
    model = MiniLMEmbedding()
    texts = model.get_text_embedding_batch([d.text for d in DOCS])
    for i, question in enumerate(["What does basil need to grow?", "Does rosemary need much water?",
                                  "How do I stop mint from spreading?"]):
        query = model.get_query_embedding(question)
        assert len(query) == 384 and abs(sum(x * x for x in query) - 1.0) < 1e-4
        scores = [sum(a * b for a, b in zip(query, t)) for t in texts]
        assert scores.index(max(scores)) == i


def test_rag_answer_carries_the_policys_reward(minilm_index: VectorStoreIndex, policies: PolicyNames) -> None:
    """End to end on the embedded model: Settings.llm answers and the answer says how it scored."""
    previous = Settings._llm
    Settings.llm = DeAL(model="smollm2", max_new_tokens=10, policy=policies.sun)
    try:
        engine = minilm_index.as_query_engine(similarity_top_k=1)
        query = "What does basil need to grow?"
        response = engine.query(query)
    finally:
        Settings._llm = previous
    (report,) = response.metadata["deal"]
    assert report["policy"] == policies.sun and report["model"] == "smollm2"
    assert report["reward"]["total"] == pytest.approx(_expected(policies.sun, str(response), query))
    assert report["stats"]["new_tokens"] <= 10
    assert "basil" in response.source_nodes[0].node.get_content().lower()  # MiniLM retrieved the right chunk


async def test_two_engines_keep_their_own_policies(mock_index: VectorStoreIndex, policies: PolicyNames,
                                                   tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm(max_new_tokens=6)
    sunny = mock_index.as_query_engine(llm=llm.with_policy(policies.sun), similarity_top_k=1)
    short = mock_index.as_query_engine(llm=llm.with_policy(policies.short), similarity_top_k=1)
    query = "Where does mint grow?"
    answers = {"sun": sunny.query(query), "short": short.query(query), "sun_async": await sunny.aquery(query)}
    for key, policy in (("sun", policies.sun), ("short", policies.short), ("sun_async", policies.sun)):
        (report,) = answers[key].metadata["deal"]
        assert report["policy"] == policy
        assert report["reward"]["total"] == pytest.approx(_expected(policy, str(answers[key]), query))
    assert answers["sun"].metadata["deal"][0]["reward"]["components"].keys() == {"keywords"}
    assert answers["short"].metadata["deal"][0]["reward"]["components"].keys() == {"length"}


async def test_streaming_query_fills_its_report_as_it_is_read(mock_index: VectorStoreIndex, policies: PolicyNames,
                                                              tiny_llm: Callable[..., DeAL]) -> None:
    llm = tiny_llm(max_new_tokens=6, policy=policies.short)
    plain = str(mock_index.as_query_engine(llm=llm, similarity_top_k=1).query("Where does mint grow?"))
    engine = mock_index.as_query_engine(llm=llm, similarity_top_k=1, streaming=True)
    streamed = engine.query("Where does mint grow?")
    assert streamed.metadata["deal"] == []  # nothing generated yet
    assert "".join(streamed.response_gen) == plain  # streaming text equals non-streaming text
    assert [r["policy"] for r in streamed.metadata["deal"]] == [policies.short]
    streamed_async = await engine.aquery("Where does mint grow?")
    assert "".join([t async for t in streamed_async.async_response_gen()]) == plain
    assert len(streamed_async.metadata["deal"]) == 1


def test_a_failed_query_leaves_no_report_behind(mock_index: VectorStoreIndex, tiny_llm: Callable[..., DeAL]) -> None:
    from llamaindex_deal import _tracking

    def broken(texts: list[str]) -> list[float]:
        raise RuntimeError("scorer down")

    with pytest.raises(Exception, match="scorer down"):
        mock_index.as_query_engine(llm=tiny_llm(reward=broken), similarity_top_k=1).query("Where does mint grow?")
    assert _tracking.open_collectors() == ()
