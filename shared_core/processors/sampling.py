"""Turning next-token scores into a choice: temperature, top-k and top-p warpers, greedy argmax or a seeded sample."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared_core.processors.base import LogitsProcessor, LogitsProcessorList

__all__ = [
    "SamplingParams",
    "divide_by_temperature",
    "TemperatureWarper",
    "TopKWarper",
    "TopPWarper",
    "choose_tokens",
    "make_generator",
    "sampling_warpers",
    "warp_logits",
]


class SamplingParams(BaseModel):
    """Sampling settings shared by every strategy that samples.

    ``temperature=0`` means greedy. ``top_k=0`` and ``top_p=1`` disable those filters.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0.0, description="softmax temperature; 0 = greedy")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = all")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus mass to keep")

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def divide_by_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``scores / temperature`` for sampling, shifted so each row's maximum is 0 first.

    The shift leaves the softmax unchanged, and keeps a tiny temperature (1e-40) from turning the
    scores into inf - inf = NaN: the best token goes to 0 and the others to -inf, which is greedy.
    """
    top = scores.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a fully masked row stays -inf
    return (scores - top) / temperature


class TemperatureWarper(LogitsProcessor):
    """Divides scores by ``temperature`` (> 0)."""

    def __init__(self, temperature: float) -> None:
        if not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, generated: Sequence[Sequence[int]], scores: torch.Tensor) -> torch.Tensor:
        return scores if self.temperature == 1.0 else divide_by_temperature(scores, self.temperature)


class TopKWarper(LogitsProcessor):
    """Keeps each row's ``top_k`` highest scores; the others become ``-inf``."""

    def __init__(self, top_k: int) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.top_k = top_k

    def __call__(self, generated: Sequence[Sequence[int]], scores: torch.Tensor) -> torch.Tensor:
        if self.top_k >= scores.shape[-1]:
            return scores
        kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, float("-inf"))


class TopPWarper(LogitsProcessor):
    """Keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (the top token always stays)."""

    def __init__(self, top_p: float) -> None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.top_p = float(top_p)

    def __call__(self, generated: Sequence[Sequence[int]], scores: torch.Tensor) -> torch.Tensor:
        if self.top_p >= 1.0:
            return scores
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_scores.softmax(dim=-1)
        # drop a token when the mass *before* it already reaches top_p
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= self.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, float("-inf"))


def sampling_warpers(params: SamplingParams) -> LogitsProcessorList:
    """The warpers ``params`` asks for, in transformers' order: temperature, top-k, top-p."""
    warpers = LogitsProcessorList()
    if params.temperature not in (0.0, 1.0):
        warpers.append(TemperatureWarper(params.temperature))
    if params.top_k > 0:
        warpers.append(TopKWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPWarper(params.top_p))
    return warpers


def warp_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Applies temperature, top-k and top-p to ``logits`` (rows, vocab); filtered entries become -inf."""
    scores = logits.float()
    if scores.dim() == 1:
        return sampling_warpers(params).one([], scores)
    return sampling_warpers(params)([[]] * scores.shape[0], scores)


def choose_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """One token id per row of ``logits`` (rows, vocab): argmax when greedy, else a seeded sample."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = warp_logits(logits, params).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A torch generator on ``device``: seeded for reproducible sampling, else from fresh entropy."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
