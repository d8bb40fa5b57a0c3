"""Processors that steer by another model or a grammar: the GenARM bonus and an allowed-tokens mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shared_core.errors import DealError
from shared_core.processors.base import LogitsProcessor

__all__ = ["AllowedTokensProcessor", "GenArmBonusProcessor"]


class GenArmBonusProcessor(LogitsProcessor):
    """GenARM: ``log_softmax(scores) + sum_i alpha_i * log p_ARM_i(next token | ARM prompt, generated)``.

    Each ARM keeps its own KV cache over its prompt and the generated tokens (an
    :class:`~shared_core.rewards.arm.ArmTokenScorer`), so a step costs one ARM forward per ARM. Only
    the first ``width`` columns (the vocabulary both models share) are returned. With no ARMs (every
    alpha 0) the scores pass through unchanged, so alpha 0 decodes exactly like the base model.

    Args:
        arms: ``(state, alpha)`` pairs; ``state.next_logprobs(generated)`` gives the ARM's log-probs.
        width: the number of logit columns both models have.
    """

    def __init__(self, arms: Sequence[tuple[Any, float]], width: int) -> None:
        self.arms = [(state, float(alpha)) for state, alpha in arms if alpha > 0.0]
        self.width = width

    def __call__(self, generated: Sequence[Sequence[int]], scores: torch.Tensor) -> torch.Tensor:
        if not self.arms:
            return scores
        if scores.shape[0] != 1:
            raise DealError(f"the GenARM bonus guides one sequence at a time (its ARMs keep one cache each), "
                            f"got {scores.shape[0]} rows")
        out = torch.log_softmax(scores[..., : self.width].float(), dim=-1)
        for state, alpha in self.arms:
            out = out + alpha * state.next_logprobs(generated[0])[: self.width].to(out.device)
        return out


class AllowedTokensProcessor(LogitsProcessor):
    """Leaves only ``allowed`` token ids possible (the others become ``-inf``): the tool-call JSON mask.

    Args:
        allowed: a boolean mask over the vocabulary (vocab,), or a sequence of allowed ids.
    """

    def __init__(self, allowed: torch.Tensor | Sequence[int]) -> None:
        self.allowed = allowed

    def __call__(self, generated: Sequence[Sequence[int]], scores: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed
        if isinstance(allowed, torch.Tensor) and allowed.dtype == torch.bool:
            mask = allowed[: scores.shape[-1]].to(scores.device)
        else:
            mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            mask[torch.as_tensor(list(allowed), dtype=torch.long, device=scores.device)] = True
        return scores.masked_fill(~mask, float("-inf"))
