"""An app whose ``worker_health_port`` comes from the environment: what ``celeriac -A ...
health`` reads when it is given no ``--port``."""

from __future__ import annotations

import os

from celeriac import Celeriac

app = Celeriac("probe_app", broker_url="memory://")
app.conf.worker_health_port = int(os.environ["PROBE_HEALTH_PORT"])
