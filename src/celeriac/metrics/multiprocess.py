"""Counting a prefork worker's children: prometheus-client's multiprocess mode.

Each consuming child counts its own outcomes (``tasks.py``). Rather than pass every count to
the supervisor (shared memory sized for an unknown set of task names, or a pipe per outcome),
the children write to prometheus-client's per-process files (one memory-mapped file per child
and kind of metric) in a directory the supervisor makes before the first fork; the supervisor's
``/metrics`` merges them at each scrape. A child that ends leaves its file, so the counts of
replaced children stay in the totals. Cost: one file per child ever started, each read at a
scrape (a worker replacing children after every task keeps adding files).

The mode is chosen by ``PROMETHEUS_MULTIPROC_DIR`` in the environment, read when
``prometheus_client`` is first imported; setting it here (before the first fork) reaches the
children. A directory set by the user is used as it is and left in place; ours is removed
when the worker stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

from celeriac.metrics._client import prometheus

ENV = "PROMETHEUS_MULTIPROC_DIR"


class MultiprocessDir:
    """The directory children write their metrics to, set up for this process and its forks."""

    def __init__(self) -> None:
        given = os.environ.get(ENV)
        self.owned = not given
        self.path = given or tempfile.mkdtemp(prefix="celeriac-metrics-")
        os.environ[ENV] = self.path
        prometheus()  # fails with what to install
        # Imported before the variable was set (by this process or the user's code): values
        # made from now on (in the children) must use the files too.
        from prometheus_client import values

        if not getattr(values.ValueClass, "_multiprocess", False):
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

    def collector_into(self, registry: Any) -> None:
        """Register the collector that merges every process's files into ``registry``."""
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self.owned:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.path)
            if os.environ.get(ENV) == self.path:
                del os.environ[ENV]
