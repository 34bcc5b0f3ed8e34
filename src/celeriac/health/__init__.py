"""Health probes of a worker, over HTTP (``--health-port``), for an orchestrator.

* ``/livez``: the worker's loop is alive, not wedged (:mod:`.pulse`);
* ``/readyz``: it reaches its broker and consumes (:mod:`.readiness`);
* :mod:`.server`: the small stdlib HTTP server both ports use (``/metrics`` too);
* :mod:`.probe`: the client ``celeriac health`` runs as an exec probe.
"""
