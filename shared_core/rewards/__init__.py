"""Reward families: one class per behaviour, all implementing :class:`Reward`.

Build them directly in Python, or from a JSON spec with :func:`shared_core.build_reward`. Each
family's module holds its spec class next to the reward.
Importing this package does not import torch or transformers; model-backed rewards load on first use.
"""

# shared_core.specs joins every reward's spec into one union and completes the weighted spec (which refers
# to that union), so importing any reward makes every spec usable.
import shared_core.specs as _specs  # noqa: F401
from shared_core.rewards.arm import ArmReward
from shared_core.rewards.base import Reward, TokenScorer
from shared_core.rewards.callable import CallableReward
from shared_core.rewards.classifier import ClassifierReward, ClassifierTokenScorer
from shared_core.rewards.keywords import KeywordsReward
from shared_core.rewards.length import LengthReward
from shared_core.rewards.safety import SafetyReward
from shared_core.rewards.weighted import TextTokenScorer, WeightedReward

__all__ = [
    "ArmReward",
    "CallableReward",
    "ClassifierReward",
    "ClassifierTokenScorer",
    "KeywordsReward",
    "LengthReward",
    "Reward",
    "SafetyReward",
    "TextTokenScorer",
    "TokenScorer",
    "WeightedReward",
]
