"""Reward families: one class per behaviour, all implementing :class:`Reward`.

Build them directly in Python, or from a JSON spec with :func:`shared_core.specs.build_reward`.
Importing this package does not import torch or transformers; model-backed rewards load on first use.
"""

from shared_core.rewards.arm import ArmReward
from shared_core.rewards.base import Reward, TokenScorer
from shared_core.rewards.callable import CallableReward
from shared_core.rewards.classifier import ClassifierReward, ClassifierTokenScorer
from shared_core.rewards.keywords import KeywordsReward
from shared_core.rewards.length import LengthReward
from shared_core.rewards.safety import SafetyReward
from shared_core.rewards.weighted import TextTokenScorer, WeightedReward, evaluate_reward

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
    "evaluate_reward",
]
