"""Task module for test_import_footprint: reports the modules each worker process imported.

The supervisor writes its own list once it consumes (worker_ready); the ``modules`` task returns
the list of the prefork child that runs it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from celeriac import Celeriac, signals

app = Celeriac("footprint")


def _dump_supervisor(sender: Any = None, **kwargs: Any) -> None:
    path = os.environ["FOOTPRINT_OUT"]
    with open(path + ".tmp", "w") as f:
        json.dump(sorted(sys.modules), f)
    os.replace(path + ".tmp", path)


signals.worker_ready.connect(_dump_supervisor)


@app.task(name="footprint.modules")
def modules() -> list[str]:
    return sorted(sys.modules)
