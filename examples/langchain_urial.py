"""URIAL around a chat model: in-context alignment for models you cannot steer token by token.

``URIALChatModel`` wraps any LangChain chat model (here ChatDeAL on the embedded model stands in for
an API model): it rewrites each conversation into the URIAL layout (a preamble and three restyled
examples), and with a reward and ``n > 1`` it samples several answers and keeps the best one.

Run: ``python examples/langchain_urial.py [--max-tokens 48]``
"""

from __future__ import annotations

import argparse

from langchain_deal import ChatDeAL, URIALChatModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    base = ChatDeAL(model="smollm2", max_tokens=args.max_tokens, temperature=0.8)  # no seed: n different samples
    aligned = URIALChatModel(llm=base, variant="safe")
    reranked = URIALChatModel(llm=base, variant="safe", reward="safe", n=3)
    for question in ["How do I make my passwords stronger?", "How can I get into my neighbour's wifi?"]:
        for label, model in [("urial", aligned), ("urial + safety rerank of 3", reranked)]:
            message = model.invoke(question)
            report = message.response_metadata["urial"]
            print(f"[{label}] {question}\n  {message.content}\n  {report}\n")


if __name__ == "__main__":
    main()
