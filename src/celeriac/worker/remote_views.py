"""What remote control sees of a worker and may change in it: one :class:`View` per shape.

* :class:`LocalView`: a worker that consumes in its own process (threads, solo, asyncio, the
  prefork "dispatch" shape, or a prefork child): its consumer holds the tasks, its pool runs
  them.
* :class:`SupervisorView`: a prefork worker whose children consume. The tasks live in the
  children; the supervisor knows what each holds and runs from their shared-memory slots
  (``lease_slots.py``), stops a revoked running task by killing the child that runs it (the
  task ends REVOKED, see ``custody.py``), hands revoked ids to the children through a ring
  in shared memory (``revoked.py``) and the settings it changes (rate and time limits, queues,
  the pool's size) through another (``overrides.py``), and starts or retires children to
  resize the pool.
"""

from __future__ import annotations

import os
import resource
import time
from abc import ABC, abstractmethod
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import Unsupported
from celeriac.worker.activity import request_info
from celeriac.worker.overrides import stop_consuming
from celeriac.worker.resize import pool_capacity, resized

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.revoked import Revoked
    from celeriac.worker.supervisor import Supervisor
    from celeriac.worker.worker import Worker


class View(ABC):
    """A worker as remote control sees it."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app: Celeriac = worker.app
        self.hostname: str = worker.hostname
        self.started_at = time.monotonic()

    @property
    def revoked(self) -> Revoked:
        return self.worker.revoked

    @property
    def queues(self) -> list[str]:
        return self.worker.queues

    @abstractmethod
    def active(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def reserved(self) -> list[dict[str, Any]]: ...

    def scheduled(self) -> list[dict[str, Any]]:
        # ETA tasks stay in the broker until due, not in worker memory: nothing to list.
        return []

    @abstractmethod
    def terminate(self, task_ids: list[str], signame: str) -> list[str]:
        """Stop those of ``task_ids`` that run here; the ids stopped."""

    @abstractmethod
    def shutdown(self) -> None: ...

    @abstractmethod
    def _processes(self) -> list[int]: ...

    def _total(self) -> dict[str, int]:
        return {}

    @abstractmethod
    def set_rate_limit(self, task_name: str, rate: Any) -> None: ...

    @abstractmethod
    def set_time_limit(self, task_name: str, soft: float | None, hard: float | None) -> None: ...

    @abstractmethod
    def resize(self, n: int) -> None:
        """Grow the pool by ``n`` (shrink when negative)."""

    @abstractmethod
    def add_consumer(self, queue: str) -> None: ...

    @abstractmethod
    def cancel_consumer(self, queue: str) -> None: ...

    def _autoscaler(self) -> dict[str, Any]:
        scaler = self.worker.autoscaler
        return {} if scaler is None else {"autoscaler": scaler.info()}

    def stats(self) -> dict[str, Any]:
        """Celery's ``stats`` reply (the keys Flower and ``celery inspect stats`` read)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conf = self.app.conf
        return {
            "total": self._total(),
            "pid": os.getpid(),
            "clock": "0",
            "uptime": int(time.monotonic() - self.started_at),
            "pool": {
                "implementation": f"celeriac:{self.worker.pool_name}",
                "max-concurrency": self.worker.concurrency,
                "processes": self._processes(),
                "max-tasks-per-child": self.worker.max_tasks_per_child,
                "put-guarded-by-semaphore": False,
                "timeouts": [conf.task_soft_time_limit, conf.task_time_limit],
            },
            "broker": {"transport": conf.broker_url.partition("://")[0]},
            "prefetch_count": self.worker.prefetch,
            **self._autoscaler(),
            "rusage": {
                "utime": usage.ru_utime,
                "stime": usage.ru_stime,
                "maxrss": usage.ru_maxrss,
            },
        }


class LocalView(View):
    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        #: how far ``pool_grow`` may take a pool that can grow (fixed at start, as prefork's)
        self.max_size = pool_capacity(worker)

    def active(self) -> list[dict[str, Any]]:
        return self.worker.activity.active()

    def reserved(self) -> list[dict[str, Any]]:
        return self.worker.activity.reserved()

    def scheduled(self) -> list[dict[str, Any]]:
        fetcher = self.worker.consumer.fetcher
        if fetcher is None:
            return []
        return [
            {
                "eta": datetime.fromtimestamp(when, timezone.utc).isoformat(),
                "priority": job.message.properties.get("priority") or 0,
                "request": request_info(job.message, job.queue, self.hostname),
            }
            for when, job in fetcher.scheduler.waiting()
        ]

    def _total(self) -> dict[str, int]:
        return dict(self.worker.activity.total)

    def _processes(self) -> list[int]:
        pool = self.worker.pool
        pids = getattr(pool, "child_pids", None)
        return list(pids()) if callable(pids) else [os.getpid()]

    def terminate(self, task_ids: list[str], signame: str) -> list[str]:
        pool = self.worker.pool
        running = {info["id"] for info in self.active()}
        hits = [t for t in task_ids if t in running]
        if hits and (pool is None or not pool.can_terminate):
            raise Unsupported(
                f"revoke terminate: the {self.worker.pool_name} pool cannot stop a running "
                f"task (flagged as revoked: {', '.join(task_ids)})"
            )
        assert pool is not None or not hits
        for task_id in hits:
            pool.revoke(task_id, terminate=True)  # type: ignore[union-attr]
        return hits

    def shutdown(self) -> None:
        self.worker.stop_soon()

    def set_rate_limit(self, task_name: str, rate: Any) -> None:
        task = self.app.tasks[task_name]
        task.rate_limit = str(rate) if rate else None
        fetcher = self.worker.consumer.fetcher
        if fetcher is not None:
            fetcher.forget_rate(task_name)

    def set_time_limit(self, task_name: str, soft: float | None, hard: float | None) -> None:
        if hard is not None and self.worker.pool_name != "prefork":
            raise Unsupported(
                f"time_limit: the {self.worker.pool_name} pool cannot enforce a hard time limit "
                "(it cannot kill a running task); set soft= only"
            )
        task = self.app.tasks[task_name]
        task.soft_time_limit, task.time_limit = soft, hard

    def resize(self, n: int) -> None:
        pool, worker = self.worker.pool, self.worker
        resize = getattr(pool, "resize", None)
        if resize is None:
            raise Unsupported(
                f"{'pool_grow' if n > 0 else 'pool_shrink'}: the {worker.pool_name} pool of "
                f"{self.hostname} has a fixed size (restart it with another -c)"
            )
        size = resized(self.hostname, worker.concurrency, n, self.max_size)
        per_slot = max(1, worker.prefetch // worker.concurrency)
        resize(n)
        worker.consumer.inflight.resized(size, per_slot)  # room for the slots added, or less
        worker.concurrency, worker.prefetch = size, size * per_slot

    def add_consumer(self, queue: str) -> None:
        self.worker.queues.append(queue)

    def cancel_consumer(self, queue: str) -> None:
        if queue in self.worker.queues:
            self.worker.queues.remove(queue)
            stop_consuming(self.worker, [queue])


class SupervisorView(View):
    def __init__(self, worker: Worker, supervisor: Supervisor) -> None:
        super().__init__(worker)
        self.supervisor = supervisor

    def _running(self) -> list[tuple[int, dict[str, Any]]]:
        slots = self.supervisor.custody.slots
        return [(i, info) for i in range(slots.count) if (info := slots.running(i)) is not None]

    def active(self) -> list[dict[str, Any]]:
        return [info for _, info in self._running()]

    def reserved(self) -> list[dict[str, Any]]:
        slots = self.supervisor.custody.slots
        running = {info["id"] for _, info in self._running()}
        out = []
        for i in range(slots.count):
            for held in slots.read(i):
                if held.task_id and held.task_id not in running:
                    out.append(
                        {
                            "id": held.task_id,
                            "name": held.task_name,
                            "args": None,
                            "kwargs": None,
                            "type": held.task_name,
                            "hostname": self.hostname,
                            "time_start": None,
                            "acknowledged": False,
                            "delivery_info": {"exchange": "", "routing_key": held.queue},
                            "worker_pid": None,
                        }
                    )
        return out

    def _processes(self) -> list[int]:
        return [p.pid for p in self.supervisor.children if p is not None and p.pid]

    def terminate(self, task_ids: list[str], signame: str) -> list[str]:
        wanted = set(task_ids)
        done = []
        for index, info in self._running():
            task_id = str(info.get("id"))
            if task_id in wanted and self.supervisor.terminate(index, task_id, signame):
                done.append(task_id)
        return done

    def shutdown(self) -> None:
        self.supervisor.stop()

    def set_rate_limit(self, task_name: str, rate: Any) -> None:
        self.supervisor.change(lambda o: o.with_rate(task_name, rate or None))

    def set_time_limit(self, task_name: str, soft: float | None, hard: float | None) -> None:
        self.supervisor.change(lambda o: o.with_time_limits(task_name, soft, hard))

    def resize(self, n: int) -> None:
        self.supervisor.resize(n)

    def add_consumer(self, queue: str) -> None:
        self.supervisor.change(lambda o: replace(o, queues=(*o.queues, queue)))

    def cancel_consumer(self, queue: str) -> None:
        self.supervisor.change(
            lambda o: replace(o, queues=tuple(q for q in o.queues if q != queue))
        )
