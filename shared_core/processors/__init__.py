"""Logits processors composed per request (transformers' ``LogitsProcessorList`` shape).

* :class:`RepetitionPenaltyProcessor`: the repetition penalty (every strategy, ``repetition_penalty=``);
* :class:`TemperatureWarper`, :class:`TopKWarper`, :class:`TopPWarper`: sampling filters;
* :class:`AllowedTokensProcessor`: the tool-call JSON mask;
* :class:`GenArmBonusProcessor`: GenARM's autoregressive-reward-model bonus.
"""

from shared_core.processors.base import LogitsProcessor, LogitsProcessorList
from shared_core.processors.guidance import AllowedTokensProcessor, GenArmBonusProcessor
from shared_core.processors.repetition import RepetitionParams, RepetitionPenaltyProcessor
from shared_core.processors.sampling import (
    SamplingParams,
    TemperatureWarper,
    TopKWarper,
    TopPWarper,
    choose_tokens,
    make_generator,
    sampling_warpers,
    warp_logits,
)

__all__ = [
    "AllowedTokensProcessor",
    "GenArmBonusProcessor",
    "LogitsProcessor",
    "LogitsProcessorList",
    "RepetitionParams",
    "RepetitionPenaltyProcessor",
    "SamplingParams",
    "TemperatureWarper",
    "TopKWarper",
    "TopPWarper",
    "choose_tokens",
    "make_generator",
    "sampling_warpers",
    "warp_logits",
]
