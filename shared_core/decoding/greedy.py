"""Plain decoding: greedy (argmax) and sampling (temperature, top-k, top-p, seed); batched over prompts.

Both run the request's logits processors (the repetition penalty, a JSON mask, a GenARM bonus) before
choosing, one cached forward per token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from shared_core.compute import exclusive_forward
from shared_core.decoding.base import DecodeJob, NoParams, Strategy, register_strategy
from shared_core.hf_compat import cache_argument, output_cache
from shared_core.processors.base import LogitsProcessorList
from shared_core.processors.sampling import SamplingParams, choose_tokens

GREEDY = SamplingParams(temperature=0.0)


def step_loop(job: DecodeJob, params: SamplingParams,
              extra: LogitsProcessorList | None = None) -> Iterator[Sequence[int]]:
    """One token per cached forward: the job's processors (then ``extra``) before the choice."""
    runner = job.runner()
    logits, cache = job.prefill()
    while True:
        scores = job.process_one(job.committed, logits)
        if extra:
            scores = extra.one(job.committed, scores)
        token = int(choose_tokens(scores.unsqueeze(0), params, job.generator)[0])
        yield (token,)
        if job.finished:
            return
        logits = runner.step(cache, torch.tensor([[token]], device=runner.device))[0]


def _batch_loop(jobs: Sequence[DecodeJob], params: SamplingParams) -> Iterator[list[Sequence[int]]]:
    """Left-padded batch decoding; rows that finish leave the batch so they cost nothing more."""
    lm = jobs[0].model
    device = lm.device
    cache_kw = cache_argument(lm.model)
    width = max(len(j.prompt_ids) for j in jobs)
    input_ids = torch.full((len(jobs), width), lm.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(jobs), width), dtype=torch.long, device=device)
    for row, job in enumerate(jobs):
        input_ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids, device=device)
        mask[row, width - len(job.prompt_ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for job in jobs:  # each row's stats count the batched forwards it took part in
        job.stats.count_forward("policy", tokens=len(job.prompt_ids))
    with exclusive_forward(device):
        jobs[0].check_cancelled()  # once the device is ours: a request cancelled while waiting runs nothing
        out = lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1)
    logits, cache = out.logits[:, -1], output_cache(out)
    active = list(range(len(jobs)))
    next_pos = positions[:, -1] + 1
    while True:
        logits = jobs[0].process([jobs[row].committed for row in active], logits)
        if params.greedy:
            tokens = logits.argmax(-1)
        else:
            tokens = torch.stack([
                choose_tokens(logits[i : i + 1], params, jobs[row].generator)[0] for i, row in enumerate(active)
            ])
        chunks: list[Sequence[int]] = [() for _ in jobs]
        for i, row in enumerate(active):
            chunks[row] = (int(tokens[i]),)
        yield chunks
        keep = [i for i, row in enumerate(active) if not jobs[row].finished]
        if not keep:
            return
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens, mask, next_pos = tokens[index], mask[index], next_pos[index]
            active = [active[i] for i in keep]
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], dim=1)
        for row in active:
            jobs[row].stats.count_forward("policy", tokens=1)
        with exclusive_forward(device):
            jobs[0].check_cancelled()
            out = lm.model(input_ids=tokens.view(-1, 1), attention_mask=mask, position_ids=next_pos.view(-1, 1),
                           use_cache=True, **{cache_kw: cache})
        logits = out.logits[:, -1]
        next_pos = next_pos + 1


@register_strategy
class GreedyStrategy(Strategy):
    """The most likely token at every step: the baseline every other strategy is measured against."""

    name = "greedy"
    Params = NoParams
    needs = frozenset({"samples"})  # a remote backend serves it as one (greedy) completion
    description = "argmax decoding with a KV cache"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        return step_loop(job, GREEDY)

    def decode_batch(self, jobs: Sequence[DecodeJob]) -> Iterator[list[Sequence[int]]]:
        return _batch_loop(jobs, GREEDY)


@register_strategy
class SampleStrategy(Strategy):
    """Ancestral sampling with temperature, top-k and top-p; reproducible with a seed."""

    name = "sample"
    Params = SamplingParams
    needs = frozenset({"samples"})
    description = "sampling with temperature / top_k / top_p"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        return step_loop(job, job.params)

    def decode_batch(self, jobs: Sequence[DecodeJob]) -> Iterator[list[Sequence[int]]]:
        return _batch_loop(jobs, jobs[0].params)
