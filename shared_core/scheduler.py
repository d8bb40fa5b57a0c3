"""The serving scheduler: continuous batching of concurrent requests on one local model.

See :mod:`shared_core.serving.scheduler` for how it works; this module is the stable import path
(``from shared_core.scheduler import Scheduler, QueueFull``).
"""

from shared_core.serving.scheduler import QueueFull, ScheduledStream, Scheduler, SchedulerClosed

__all__ = ["QueueFull", "ScheduledStream", "Scheduler", "SchedulerClosed"]
