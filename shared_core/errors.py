"""Errors raised by deal. Every one names the bad field and what would be valid."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DealError",
    "ModelLoadError",
    "RewardError",
]


class DealError(Exception):
    """Base class for every error deal raises on purpose."""


class ConfigError(DealError, ValueError):
    """A user-supplied argument, parameter or spec is invalid. Raised before any model work."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ModelLoadError(DealError, OSError):
    """A model could not be found or loaded (unknown alias, missing path, unreachable hub)."""


class RewardError(DealError, RuntimeError):
    """A reward failed while scoring; the original exception is chained as ``__cause__``."""
