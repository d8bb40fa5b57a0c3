"""Two chains in one app, each with its own alignment policy, over one shared model.

``ChatDeAL(...).configurable_deal()`` declares the configurable fields ``deal_policy``, ``deal_reward``
and ``deal_strategy``; each chain picks its own with ``with_config``. The weights load once (a
process-wide cache), and the chains run concurrently with ``abatch``.

Run: ``python examples/langchain_policies.py [--max-tokens 40]``
"""

from __future__ import annotations

import argparse
import asyncio

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from langchain_deal import ChatDeAL
from shared_core.policies import register_policy


async def run(max_tokens: int) -> None:
    register_policy("support-tone", {"type": "keywords", "words": ["sorry", "help"]}, overwrite=True)
    llm = ChatDeAL(model="smollm2", max_tokens=max_tokens).configurable_deal()
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])

    def show(message):  # type: ignore[no-untyped-def]
        meta = message.response_metadata
        return f"[{meta['policy']} / {meta['strategy']} / reward {meta['reward'] and meta['reward']['total']:.2f}] " \
               f"{message.content}"

    base = prompt | llm | RunnableLambda(show)
    support = base.with_config(configurable={"deal_policy": "support-tone"})
    brief = base.with_config(configurable={"deal_policy": "concise"})
    questions = [{"q": "My order arrived broken."}, {"q": "How do I reset my password?"}]
    support_out, brief_out = await asyncio.gather(support.abatch(questions), brief.abatch(questions))
    for line in support_out + brief_out:
        print(line, "\n")
    plain = prompt | llm | StrOutputParser()
    print("default (no policy):", plain.invoke({"q": "Say hello."}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=40)
    asyncio.run(run(parser.parse_args().max_tokens))


if __name__ == "__main__":
    main()
