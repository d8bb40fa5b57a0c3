"""Turning next-token logits into a choice: greedy argmax or seeded sampling with temperature/top-k/top-p."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator


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


def warp_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Applies temperature, top-k and top-p to ``logits`` (..., vocab); filtered entries become -inf."""
    scores = logits.float()
    if params.temperature not in (0.0, 1.0):
        scores = scores / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_scores.softmax(dim=-1)
        # drop a token when the mass *before* it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


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


class RepetitionParams(BaseModel):
    """A repetition penalty for plain decoding; small base models otherwise loop on one sentence.

    Layout tokens (whitespace only, or backticks only: newlines, indentation, code fences) are left
    alone unless ``penalize_layout`` is set, as llama.cpp leaves newlines alone: penalizing them keeps
    a model from ending a line or closing a fence once it has done so before, and a URIAL answer ends
    with exactly such a line.
    """

    model_config = ConfigDict(extra="forbid")

    repetition_penalty: float = Field(
        1.0, gt=0.0, description="divide positive logits (multiply negative ones) of already generated tokens; 1 = off"
    )
    penalize_layout: bool = Field(
        False, description="apply the penalty to whitespace-only and backtick-only tokens too"
    )

    @field_validator("repetition_penalty")
    @classmethod
    def _finite_penalty(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


def penalize_repeats(
    logits: torch.Tensor, generated: list[list[int]], penalty: float, exempt: frozenset[int] = frozenset()
) -> torch.Tensor:
    """Applies the CTRL-style repetition penalty to each row over the tokens *generated* in that row.

    Unlike ``transformers``' processor, prompt tokens are not penalized: a few-shot prompt (URIAL)
    would otherwise make its own format tokens unlikely. Tokens in ``exempt`` are never penalized.
    """
    if penalty == 1.0 or not any(generated):
        return logits
    logits = logits.clone()
    for row, ids in enumerate(generated):
        penalized = set(ids) - exempt
        if not penalized:
            continue
        index = torch.tensor(sorted(penalized), device=logits.device)
        values = logits[row, index]
        logits[row, index] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def repetition_exemptions(params: RepetitionParams, layout_token_ids: Callable[[], frozenset[int]]) -> frozenset[int]:
    """The token ids ``params``' penalty leaves alone: the model's layout tokens unless those are penalized too."""
    if params.repetition_penalty == 1.0 or params.penalize_layout:
        return frozenset()
    return layout_token_ids()
