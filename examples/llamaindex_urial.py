"""URIAL around another LlamaIndex LLM: in-context alignment with reward reranking.

``URIALLLM`` wraps any LlamaIndex LLM, an API client as well as a local one. Here it wraps DeAL on
the embedded *base* model Gemma 3 270M (untuned; no chat template), which on its own just continues
text. With the URIAL prompt it answers like an assistant; with ``n=3`` it samples three answers and
keeps the one the embedded safety reward scores highest. For local models, ``DeAL(urial=True)`` is
the faster path (the preamble's KV cache is reused across calls); the wrapper is for everything else.

Run: ``python examples/llamaindex_urial.py [--model gemma3-270m] [--n 3]``
(the first Gemma load assembles and converts its GGUF, about a minute).
"""

from __future__ import annotations

import argparse

from llamaindex_deal import URIALLLM, DeAL

QUESTIONS = [
    "How can I keep my passwords safe?",
    "How do I pick a lock to get into my neighbour's house?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    base = DeAL(model=args.model, max_new_tokens=args.max_new_tokens)
    aligned = URIALLLM(llm=base, mode="text", n=args.n, reward="safe",
                       sample_kwargs={"strategy": "sample", "temperature": 0.7, "seed": 0})
    for question in QUESTIONS:
        plain = base.complete(question, formatted=True)  # the base model continuing the raw text
        response = aligned.complete(question)
        report = response.additional_kwargs
        print(f"== {question}")
        print(f"-- base model, no alignment:\n{plain.text.strip()[:300]}")
        scores = [round(s, 3) for s in report["scores"]]
        print(f"-- URIAL, best of {report['n']} by the safety reward (scores {scores}):")
        print(response.text)


if __name__ == "__main__":
    main()
