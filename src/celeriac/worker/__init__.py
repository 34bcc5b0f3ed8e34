"""The worker: consumes messages, runs tasks in a pool, stores results, acknowledges."""

from celeriac.worker.worker import Worker

__all__ = ["Worker"]
