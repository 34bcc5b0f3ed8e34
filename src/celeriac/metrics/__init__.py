"""Prometheus metrics (``pip install celeriac[metrics]``), served by a worker on
``--metrics-port`` and reusable by anything that watches events (the dashboard).

* :mod:`.tasks`: what a consumer counts as it applies outcomes (tasks by name and state,
  runtimes);
* :mod:`.multiprocess`: how a prefork worker's children are counted: prometheus-client's
  multiprocess mode, a directory of per-process files the supervisor reads at each scrape;
* :mod:`.worker`: what is read at scrape time (worker up, tasks running, queue depth and the
  age of the oldest message where the broker can tell);
* :mod:`.events`: the same task metrics computed from task events, for a process that watches
  a cluster rather than runs it.

Nothing here imports ``prometheus_client`` until a metric is made.
"""

from __future__ import annotations

METRIC_PREFIX = "celeriac"

__all__ = ["METRIC_PREFIX"]
