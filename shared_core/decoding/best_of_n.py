"""Best-of-N: sample N answers, keep the one the reward likes best.

The prompt is encoded once; its KV cache is expanded to N rows and the N samples are decoded as one
batch. A row that reaches EOS or a stop string leaves the batch at once, so short samples cost nothing
after they end. The finished texts (stop strings applied) are scored in one batched reward call and
the winner's token ids are yielded. Sampling is seeded by ``generate(..., seed=)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from shared_core.decoding.args import TextRewardCache
from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.processors.sampling import SamplingParams, divide_by_temperature, warp_logits

SHORTLIST = 256  # tokens examined before falling back to sorting the whole vocabulary


class BestOfNParams(BaseModel):
    """Parameters of :class:`BestOfNStrategy`."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(8, ge=1, description="samples drawn and reranked by the reward")
    temperature: float = Field(0.8, gt=0.0, allow_inf_nan=False, description="sampling temperature (> 0)")
    top_p: float = Field(0.95, gt=0.0, le=1.0, allow_inf_nan=False, description="nucleus mass kept when sampling")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens; 0 = all")
    include_greedy: bool = Field(
        False, description="make the first row greedy, so the winner never scores below greedy"
    )


def nucleus(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sampling distribution of each row as (ids, probs) over a short list of tokens, without a full sort.

    The same distribution as ``warp_logits(logits, params).softmax(-1)`` (temperature, then top-k, then
    top-p), computed on the ``SHORTLIST`` most likely tokens: exact whenever the nucleus fits in it,
    which is the common case. Returns ``(ids, probs, exact)``; rows where ``exact`` is False must be
    sampled from the full distribution instead.
    """
    scores = logits.float()
    if params.temperature not in (0.0, 1.0):
        scores = divide_by_temperature(scores, params.temperature)
    vocab = scores.shape[-1]
    width = min(params.top_k, vocab) if params.top_k > 0 else min(SHORTLIST, vocab)
    values, ids = torch.topk(scores, width, dim=-1)
    if params.top_k > 0:
        probs = values.softmax(dim=-1)  # top-k keeps exactly these tokens
        exact = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
    else:
        probs = (values - torch.logsumexp(scores, dim=-1, keepdim=True)).exp()
        exact = probs.sum(dim=-1) >= params.top_p if params.top_p < 1.0 else probs.sum(dim=-1) >= 1.0
    if params.top_p < 1.0:
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        probs = probs.masked_fill(before >= params.top_p, 0.0)
    return ids, probs / probs.sum(dim=-1, keepdim=True), exact


def sample_rows(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """One sampled token per row of ``logits`` (rows, vocab), from :func:`nucleus` where it is exact."""
    ids, probs, exact = nucleus(logits, params)
    picks = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    tokens = ids.gather(-1, picks.unsqueeze(-1)).squeeze(-1)
    if not bool(exact.all()):
        rows = (~exact).nonzero().flatten()
        full = warp_logits(logits[rows], params).softmax(dim=-1)
        tokens[rows] = torch.multinomial(full, 1, generator=generator).squeeze(-1)
    return tokens


def sample_batch(job: DecodeJob, params: BestOfNParams) -> list[list[int]]:
    """Decodes ``params.n`` samples sharing one prefill; finished rows leave the batch."""
    runner = job.runner()
    logits, cache = job.prefill()
    n = params.n
    eos = job.model.eos_token_ids
    stops = job.state.stop_strings
    sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    device = runner.device
    if n > 1:
        cache.batch_repeat_interleave(n)
    logits = logits.unsqueeze(0).expand(n, -1)
    samples: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))
    for _ in range(job.max_new_tokens):
        logits = job.process([samples[row] for row in active], logits)
        tokens = sample_rows(logits, sampling, job.generator)
        if params.include_greedy and active and active[0] == 0:
            tokens[0] = logits[0].argmax()
        keep = []
        for i, (row, token) in enumerate(zip(active, tokens.tolist())):
            samples[row].append(token)
            done = token in eos or len(samples[row]) >= job.max_new_tokens
            if not done and stops:
                done = job.candidate_text(samples[row]) != job.model.decode(samples[row])
            if not done:
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens = tokens[index]
            active = [active[i] for i in keep]
        logits = runner.step(cache, tokens.view(-1, 1).to(device))
    return samples


@register_strategy
class BestOfNStrategy(Strategy):
    """``n`` samples from one shared prefill, reranked by the reward; the best is returned.

    Example:
        >>> from shared_core import generate
        >>> r = generate("smollm2", "Give me a tip for staying safe online.", strategy="best_of_n",  # doctest: +SKIP
        ...              reward={"type": "safety"}, n=8, seed=0)
    """

    name = "best_of_n"
    Params = BestOfNParams
    needs_reward = True
    needs = frozenset({"samples"})  # remotely: one request with n
    description = "best-of-N: n samples decoded as one batch from a shared prefill, reranked by the reward"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        samples = sample_batch(job, job.params)
        scores = TextRewardCache(job)(samples)
        best = max(range(len(samples)), key=lambda i: scores[i])
        job.stats.extra.update(samples=len(samples), sample_tokens=sum(len(s) for s in samples),
                               sample_scores=scores, chosen=best)
        yield samples[best]
