"""Serving one local model to many concurrent callers: the continuous-batching :class:`Scheduler`."""

from shared_core.serving.scheduler import QueueFull, ScheduledStream, Scheduler, SchedulerClosed

__all__ = ["QueueFull", "ScheduledStream", "Scheduler", "SchedulerClosed"]
