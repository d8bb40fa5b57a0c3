"""Plain decoding: greedy (argmax) and sampling (temperature, top-k, top-p, seed); batched over prompts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.decoding.sampling import (
    RepetitionParams,
    SamplingParams,
    choose_tokens,
    penalize_repeats,
    repetition_exemptions,
)


class GreedyParams(RepetitionParams):
    """Greedy decoding's only knob: an optional repetition penalty."""


class SampleParams(SamplingParams, RepetitionParams):
    """Sampling settings plus an optional repetition penalty."""


def _step_loop(job: DecodeJob, params: SamplingParams, repetition: RepetitionParams) -> Iterator[Sequence[int]]:
    runner = job.runner()
    penalty = repetition.repetition_penalty
    exempt = repetition_exemptions(repetition, lambda: job.model.layout_token_ids)
    logits, cache = job.prefill()
    while True:
        logits = penalize_repeats(logits.unsqueeze(0), [job.committed], penalty, exempt)[0]
        token = int(choose_tokens(logits.unsqueeze(0), params, job.generator)[0])
        yield (token,)
        if job.finished:
            return
        logits = runner.step(cache, torch.tensor([[token]], device=runner.device))[0]


def _batch_loop(
    jobs: Sequence[DecodeJob], params: SamplingParams, repetition: RepetitionParams
) -> Iterator[list[Sequence[int]]]:
    """Left-padded batch decoding; rows that finish leave the batch so they cost nothing more."""
    lm = jobs[0].model
    penalty = repetition.repetition_penalty
    exempt = repetition_exemptions(repetition, lambda: lm.layout_token_ids)
    device = lm.device
    width = max(len(j.prompt_ids) for j in jobs)
    input_ids = torch.full((len(jobs), width), lm.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(jobs), width), dtype=torch.long, device=device)
    for row, job in enumerate(jobs):
        input_ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids, device=device)
        mask[row, width - len(job.prompt_ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for job in jobs:  # each row's stats count the batched forwards it took part in
        job.stats.count_forward("policy")
    with torch.inference_mode():
        out = lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1)
    logits, cache = out.logits[:, -1], out.past_key_values
    active = list(range(len(jobs)))
    next_pos = positions[:, -1] + 1
    while True:
        logits = penalize_repeats(logits, [jobs[row].committed for row in active], penalty, exempt)
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
            jobs[row].stats.count_forward("policy")
        with torch.inference_mode():
            out = lm.model(input_ids=tokens.view(-1, 1), attention_mask=mask, position_ids=next_pos.view(-1, 1),
                           past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
        next_pos = next_pos + 1


@register_strategy
class GreedyStrategy(Strategy):
    """The most likely token at every step: the baseline every other strategy is measured against."""

    name = "greedy"
    Params = GreedyParams
    description = "argmax decoding with a KV cache"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        return _step_loop(job, SamplingParams(temperature=0.0), job.params)

    def decode_batch(self, jobs: Sequence[DecodeJob]) -> Iterator[list[Sequence[int]]]:
        return _batch_loop(jobs, SamplingParams(temperature=0.0), jobs[0].params)


@register_strategy
class SampleStrategy(Strategy):
    """Ancestral sampling with temperature, top-k and top-p; reproducible with a seed."""

    name = "sample"
    Params = SampleParams
    description = "sampling with temperature / top_k / top_p"

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        return _step_loop(job, job.params, job.params)

    def decode_batch(self, jobs: Sequence[DecodeJob]) -> Iterator[list[Sequence[int]]]:
        return _batch_loop(jobs, jobs[0].params, jobs[0].params)
