"""The logits-processor interface: one small class per change to next-token scores, composed in a list.

The shape is transformers' ``LogitsProcessorList``: each processor takes the tokens generated so far
for every row and the rows' scores, and returns new scores. Every strategy that picks tokens from
logits runs the request's list before its own choice, so a repetition penalty, a JSON mask or a
GenARM bonus works with greedy, sampling, ARGS, DeAL, best-of-N, GenARM and Transfer Q* alike.

``generated`` holds the *continuation* of each row (the prompt is not part of it): a penalty on
repeated tokens must not punish a few-shot prompt's own format tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import torch

__all__ = ["LogitsProcessor", "LogitsProcessorList"]


class LogitsProcessor(ABC):
    """Changes next-token scores ``(rows, vocab)`` given each row's generated token ids."""

    @abstractmethod
    def __call__(self, generated: Sequence[Sequence[int]], scores: torch.Tensor) -> torch.Tensor:
        """New scores for the rows of ``scores``; ``generated[i]`` is row ``i``'s continuation so far."""

    def one(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        """The processed scores of a single row ``logits`` (vocab,) after ``generated``."""
        return self([generated], logits.unsqueeze(0))[0]


class LogitsProcessorList(list):
    """Processors applied in order; an empty list returns the scores unchanged."""

    def __init__(self, processors: Iterable[LogitsProcessor] = ()) -> None:
        super().__init__(processors)

    def __call__(self, generated: Sequence[Sequence[int]], scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(generated, scores)
        return scores

    def one(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        """The processed scores of a single row ``logits`` (vocab,) after ``generated``."""
        if not self:
            return logits
        return self([generated], logits.unsqueeze(0))[0]
