"""LangChain integration for deal: reward-guided decoding on local models, URIAL for any chat model.

- :class:`ChatDeAL`: a chat model (tools, structured output, streaming, async, per-chain policies).
- :class:`DeALLLM`: the same engine as a text-completion LLM.
- :class:`URIALChatModel`: URIAL in-context alignment around any chat model, with optional reranking.
- :class:`MiniLMEmbeddings`: offline sentence embeddings for RAG examples and vector stores.

Example:
    >>> from langchain_deal import ChatDeAL
    >>> llm = ChatDeAL(model="smollm2", max_tokens=64, policy="concise")   # doctest: +SKIP
    >>> llm.invoke("Give me two tips for staying safe online.").content     # doctest: +SKIP
"""

from langchain_deal.chat_models import CONFIGURABLE_IDS, ChatDeAL
from langchain_deal.embeddings import MiniLMEmbeddings
from langchain_deal.llms import DeALLLM
from langchain_deal.urial import URIALChatModel

__all__ = ["CONFIGURABLE_IDS", "ChatDeAL", "DeALLLM", "MiniLMEmbeddings", "URIALChatModel"]
