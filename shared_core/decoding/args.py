"""ARGS: reward-guided token selection (Khanov et al., 2024, "ARGS: Alignment as Reward-Guided Search").

At every step the policy proposes its ``top_k`` most likely next tokens; each candidate's score is its
log-probability plus ``weight * reward(continuation so far + candidate)``, and the next token is the
best candidate (or a sample from the candidates' re-weighted distribution when ``temperature > 0``).

Where the time goes, and how it is kept low:

* The policy runs one cached forward per token, exactly like greedy decoding.
* A reward that can rate candidate tokens directly (``Reward.token_scorer``; e.g. a classifier that
  shares the policy's tokenizer keeps its own KV cache) costs one cached reward forward per token,
  covering all k candidates at once.
* Any other reward scores the k candidate texts in one batched ``Reward.score`` call per step; only
  the generated tokens are decoded (never the prompt), and texts already scored are not re-scored.

``weight=0`` skips the reward entirely and is exactly greedy decoding (or sampling with ``top_k``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.processors.sampling import SamplingParams, choose_tokens
from shared_core.rewards.base import TokenScorer
from shared_core.rewards.runtime import score_candidates


class TextRewardCache:
    """Scores continuations (generated token ids) with the job's reward, on text, remembering results.

    Ids are decoded without the prompt and with the job's stop strings applied
    (``DecodeJob.candidate_text``); identical texts are scored once per job. Each call makes at most
    one batched ``Reward.score`` call, wrapped so failures surface as a :class:`RewardError` with context.
    """

    def __init__(self, job: DecodeJob) -> None:
        self.job = job
        self._scores: dict[str, float] = {}
        job.stats.extra.setdefault("reward_texts_scored", 0)

    def texts(self, continuations: Sequence[Sequence[int]]) -> list[str]:
        return [self.job.candidate_text(ids) for ids in continuations]

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        todo = list(dict.fromkeys(t for t in texts if t not in self._scores))
        if todo:
            for text, value in zip(todo, self.job.score(todo)):
                self._scores[text] = value
            self.job.stats.extra["reward_texts_scored"] += len(todo)
        return [self._scores[t] for t in texts]

    def __call__(self, continuations: Sequence[Sequence[int]]) -> list[float]:
        return self.score_texts(self.texts(continuations))


class ArgsParams(BaseModel):
    """Parameters of :class:`ArgsStrategy`."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(10, ge=1, description="candidate next tokens rated by the reward at each step")
    weight: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="reward weight; 0 = plain decoding")
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="0 = pick the best candidate; > 0 samples")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="nucleus mass kept when sampling")


def _candidate_scores(job: DecodeJob, scorer: TokenScorer | None, texts: TextRewardCache,
                      candidates: list[int]) -> list[float]:
    """The reward of ``committed + [c]`` for each candidate ``c``: incrementally when possible."""
    committed = job.committed
    if scorer is not None:
        return score_candidates(job.reward, scorer, committed, candidates, stats=job.stats)
    return texts([[*committed, c] for c in candidates])


def _args_loop(job: DecodeJob, params: ArgsParams) -> Iterator[Sequence[int]]:
    runner = job.runner()
    logits, cache = job.prefill()
    plain = SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
    scorer = None
    texts = None
    if params.weight > 0:
        assert job.reward is not None
        scorer = job.reward.token_scorer(job.model, job.prompt_ids, job.stats)
        texts = TextRewardCache(job)
        job.stats.extra["reward_scoring"] = "tokens" if scorer is not None else "text"
    steps = 0
    while True:
        logits = job.process_one(job.committed, logits)
        if texts is None:
            token = int(choose_tokens(logits.unsqueeze(0), plain, job.generator)[0])
        else:
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            top = torch.topk(logprobs, min(params.top_k, logprobs.shape[-1]))
            candidates = top.indices.tolist()
            rewards = torch.tensor(_candidate_scores(job, scorer, texts, candidates), dtype=torch.float32)
            combined = top.values + params.weight * rewards
            choice = int(choose_tokens(combined.unsqueeze(0), plain, job.generator)[0])
            token = candidates[choice]
            steps += 1
            job.stats.extra["candidates_scored"] = steps * len(candidates)
        yield (token,)
        if job.finished:
            return
        logits = runner.step(cache, torch.tensor([[token]], device=runner.device))[0]


@register_strategy
class ArgsStrategy(Strategy):
    """Token-level reward guidance: ``log p(token) + weight * reward(text + token)`` over the top-k tokens.

    Example:
        >>> from shared_core import generate
        >>> r = generate("smollm2", "Write one sentence about a dog.", strategy="args",       # doctest: +SKIP
        ...              reward={"type": "keywords", "words": ["frisbee"]}, weight=2.0)
    """

    name = "args"
    Params = ArgsParams
    needs_reward = True
    needs = frozenset({"top_logprobs"})  # remotely: the top-k next tokens per step
    description = "ARGS: top-k candidates re-ranked by log-prob + weight * reward at every token"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        return _args_loop(job, job.params)
