"""GenARM: decode from ``log p_base + sum_i alpha_i * log p_ARM_i``, one cached forward per model per token.

GenARM (Xu et al., 2024, "GenARM: Reward Guided Generation with Autoregressive Reward Model for
Test-Time Alignment") shows that when the reward is the log-likelihood of an autoregressive reward
model (ARM), the KL-regularized optimal policy factorizes over tokens:

    pi_decode(y_t | x, y_<t)  proportional to  p_base(y_t | x, y_<t) * prod_i p_ARM_i(y_t | x, y_<t) ** alpha_i

so guided decoding needs only next-token log-probs of the ARMs, never a rollout or a re-scoring of
text. Several ARMs with user weights give a multi-objective trade-off at decode time, and a small
ARM can guide a larger base model that shares its tokenizer.

The ARM bonus is a logits processor (:class:`~shared_core.processors.GenArmBonusProcessor`) after the
request's own (a repetition penalty applies to the base model's logits first). Every model keeps its
own KV cache: the policy over its prompt, each ARM over its own prompt (which differs when the ARM is
prompted with an ``instruction``); all caches grow by the same committed token, so each step costs
exactly one forward per model (``stats.forward_passes``: ``"policy"``,
``"arm:0"``, ``"arm:1"``, ...). ARMs with alpha 0 are skipped entirely, so alpha 0 reproduces the base
model's output exactly.

Temperature: ``temperature=T`` samples from ``pi_decode ** (1/T)``, i.e. the summed scores divided by
T; ``T=1`` samples from ``pi_decode`` itself. The reference implementation averages the logits,
``(log p_base + alpha * log p_ARM) / (1 + alpha)``, and samples at ``T / (1 + alpha)`` to get the same
distribution; the two conventions agree. ``temperature=0`` (the default) takes the argmax.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pydantic import Field

from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.decoding.greedy import step_loop
from shared_core.processors.base import LogitsProcessorList
from shared_core.processors.guidance import GenArmBonusProcessor
from shared_core.processors.sampling import SamplingParams
from shared_core.rewards.arm import ArmTokenScorer, collect_arms


class GenArmParams(SamplingParams):
    """GenARM's sampling settings: greedy by default; ``temperature`` applies to the combined scores."""

    temperature: float = Field(0.0, ge=0.0, description="0 = argmax of the combined scores; 1 = sample pi_decode")


def genarm_demo_rows() -> list[dict]:
    """Rows for ``deal demo``: a prompt, a label, and the ``generate`` keyword arguments to compare with greedy.

    Both run on the embedded model alone: GenARM with the model itself as a prompted ARM, and
    Transfer Q* with the model as its own baseline. Use as
    ``generate(lm, row["prompt"], max_new_tokens=n, **row["kwargs"])``.
    """
    return [
        {
            "label": "genarm: prompted ARM prefers one short sentence",
            "prompt": "What is the opposite of hot?",
            "kwargs": {"strategy": "genarm", "reward": {
                "type": "arm", "model": "smollm2", "weight": 1.0,
                "instruction": "Answer with one short sentence and nothing else."}},
        },
        {
            "label": "transfer_q: rollouts valued by a keyword reward",
            "prompt": "Give me two tips for staying safe online.",
            "kwargs": {"strategy": "transfer_q", "reward": {"type": "keywords", "words": ["two"]},
                       "baseline": "smollm2", "k": 3, "horizon": 4, "alpha": 0.1},
        },
    ]


@register_strategy
class GenArmStrategy(Strategy):
    """Guided decoding with autoregressive reward models (the reward must be ARM specs).

    Example:
        >>> generate("smollm2", "What is tea?", strategy="genarm",                          # doctest: +SKIP
        ...          reward={"type": "arm", "model": "smollm2", "weight": 1.0,
        ...                  "instruction": "Answer in one short sentence."})
    """

    name = "genarm"
    Params = GenArmParams
    needs_reward = True
    description = "base log-probs + alpha * ARM log-probs (one cached ARM forward per token)"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        params: GenArmParams = job.params
        terms = collect_arms(job.reward, strategy=self.name)
        active = [term for term in terms if term.alpha > 0.0]
        arms = [term.reward.load(job.model, field=term.field) for term in active]  # checks vocabularies
        width = min([job.model.vocab_size, *(arm.vocab_size for arm in arms)])
        arm_prompts = [
            term.reward.prompt_ids(arm, job.prompt if job.prompt is not None else job.prompt_text,
                                   chat=job.chat, policy_prompt_ids=job.prompt_ids)
            for term, arm in zip(active, arms)
        ]
        job.stats.extra["genarm"] = {
            "alphas": {term.label: term.alpha for term in terms},
            "arm_prompt_tokens": {term.label: len(ids) for term, ids in zip(active, arm_prompts)},
        }
        states = [
            (ArmTokenScorer(term.reward, arm, ids, job.stats, label=term.label, cancel=job.cancel), term.alpha)
            for term, arm, ids in zip(active, arms, arm_prompts)
        ]
        bonus = LogitsProcessorList([GenArmBonusProcessor(states, width)])
        return step_loop(job, params, extra=bonus)
