"""LlamaIndex integration: ``DeAL`` (reward-guided local LLM with function calling) and ``URIALLLM``.

Example:
    >>> from llama_index.core import Settings
    >>> from llamaindex_deal import DeAL, MiniLMEmbedding
    >>> Settings.llm = DeAL(model="smollm2", max_new_tokens=64, policy="safe")  # doctest: +SKIP
    >>> Settings.embed_model = MiniLMEmbedding()                                 # doctest: +SKIP
"""

from llamaindex_deal.embeddings import MiniLMEmbedding
from llamaindex_deal.llm import DeAL
from llamaindex_deal.urial import URIALLLM

__all__ = ["DeAL", "MiniLMEmbedding", "URIALLLM"]
