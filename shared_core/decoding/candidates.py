"""Shared pieces of the strategies that decode several candidate continuations as one batch and let the
reward choose among them (``speculative_rejection``, ``cards``).

* :class:`RowSampler` draws one token per batch row. The *lead* row draws exactly as the ``sample``
  strategy does (the job's own generator, the fully warped distribution); the other rows use
  best_of_n's shortlist sampler with a second generator derived from the same seed. So whenever a
  search keeps the lead row all the way (a constant reward, a zero weight), its output is, token for
  token, what plain sampling with the same seed and settings returns.
* :func:`cache_rows` takes some rows of a batched KV cache out into a cache of their own, copying
  only those rows, while the batch goes on (a candidate that paused at a segment boundary keeps its
  cache for when it is accepted).
* :func:`next_token_entropy` is the entropy (nats) of each row's next-token distribution.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from shared_core.decoding.base import DecodeJob
from shared_core.decoding.best_of_n import sample_rows
from shared_core.hf_compat import report_slow_path
from shared_core.processors.sampling import SamplingParams, choose_tokens

__all__ = [
    "CandidateSampling",
    "RowSampler",
    "cache_rows",
    "derived_generator",
    "next_token_entropy",
    "stopped_by_string",
]

_SEED_MODULUS = 2**63 - 1


class CandidateSampling(BaseModel):
    """How candidates are sampled (the same settings and defaults as ``best_of_n``)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.8, gt=0.0, allow_inf_nan=False, description="sampling temperature (> 0)")
    top_p: float = Field(0.95, gt=0.0, le=1.0, allow_inf_nan=False, description="nucleus mass kept when sampling")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens; 0 = all")

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


def derived_generator(job: DecodeJob, salt: int) -> torch.Generator:
    """A generator seeded from the job's seed and ``salt``: reproducible, independent of the job's own."""
    generator = torch.Generator(device=job.generator.device)
    generator.manual_seed((job.generator.initial_seed() * 1_000_003 + salt) % _SEED_MODULUS)
    return generator


class RowSampler:
    """Draws one token per row; the lead row exactly as ``sample`` would, the others from the fast shortlist.

    Example:
        >>> sampler = RowSampler(job, SamplingParams(temperature=0.8, top_p=0.95))  # doctest: +SKIP
        >>> tokens = sampler.sample(logits, lead=0)  # row 0 drawn with job.generator   # doctest: +SKIP
    """

    def __init__(self, job: DecodeJob, params: SamplingParams, salt: int = 1) -> None:
        if params.greedy:
            raise ValueError("RowSampler samples: temperature must be > 0")
        self.params = params
        self.lead_generator = job.generator
        self.other_generator = derived_generator(job, salt)

    def sample(self, logits: torch.Tensor, lead: int | None) -> torch.Tensor:
        """One token id per row of ``logits`` (rows, vocab); row ``lead`` (or none) uses the job's generator."""
        rows = logits.shape[0]
        if lead is not None and rows == 1:
            return choose_tokens(logits, self.params, self.lead_generator)
        tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
        others = [i for i in range(rows) if i != lead]
        if lead is not None:
            tokens[lead] = choose_tokens(logits[lead : lead + 1], self.params, self.lead_generator)[0]
        if others:
            index = torch.tensor(others, device=logits.device)
            tokens[index] = sample_rows(logits[index], self.params, self.other_generator)
        return tokens


def cache_rows(cache: Any, indices: Sequence[int], stats: Any = None) -> Any:
    """A new cache holding rows ``indices`` of ``cache`` (repeats allowed); ``cache`` itself is unchanged.

    Only the selected rows' tensors are copied: the cache object and its layers are copied shallowly
    and ``batch_select_indices`` then replaces the copies' tensors. A cache without a ``layers`` list
    is deep-copied first (slower; reported as a slow path).
    """
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list):
        taken = copy.copy(cache)
        taken.layers = [copy.copy(layer) for layer in layers]
    else:
        report_slow_path(stats, "cache_rows", f"{type(cache).__name__} has no list of layers: deep-copied the "
                                              "whole cache to take some rows out of it")
        taken = copy.deepcopy(cache)
    device = _cache_device(cache)
    taken.batch_select_indices(torch.tensor(list(indices), dtype=torch.long, device=device))
    return taken


def _cache_device(cache: Any) -> torch.device | None:
    for layer in getattr(cache, "layers", []) or []:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor):
            return keys.device
    return None


def next_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy in nats of ``softmax(logits)`` for each row of ``logits`` (rows, vocab); -inf entries count as 0."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return -torch.special.xlogy(logprobs.exp(), logprobs.exp()).sum(dim=-1)


def stopped_by_string(job: DecodeJob, ids: Sequence[int]) -> bool:
    """Whether one of the job's stop strings occurs in the text of continuation ``ids``."""
    return bool(job.state.stop_strings) and job.candidate_text(ids) != job.model.decode(ids)
