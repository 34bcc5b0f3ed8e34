"""A Celery project's tasks module, written as a Celery user writes it.

``test_dropin_celery_project.py`` runs it as it is (for Celery workers) and with only its
``from celery import ...`` line switched to ``from celeriac import ...`` (for Celeriac's
clients and workers). Where it connects comes from the environment, as in most projects.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery, chain, chord, group

app = Celery("proj", broker=os.environ["DROPIN_BROKER"], backend=os.environ["DROPIN_BACKEND"])
app.conf.task_default_queue = os.environ["DROPIN_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
if os.environ.get("DROPIN_PREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["DROPIN_PREFIX"]}
    app.conf.result_backend_transport_options = {"global_keyprefix": os.environ["DROPIN_PREFIX"]}


@app.task
def add(x, y):
    return x + y


@app.task
def tsum(values):
    return sum(values)


@app.task
def fail(tag):
    raise ValueError(tag)


@app.task
def on_error_task_id(task_id):
    note("task_id", task_id, "-")


@app.task
def on_error_request(request, exc, traceback):
    note("request", request.id, f"{type(exc).__name__}:{exc}")


def note(form, task_id, detail):
    with open(Path(os.environ["DROPIN_LEDGER"]) / f"{os.getpid()}.log", "a") as f:
        f.write(f"{form} {task_id} {detail}\n")


def start_workflows(chords=True):
    """The project's code: workflows started the ways Celery's documentation shows."""
    started = {
        "chain": chain(add.s(1, 2), add.s(10), add.s(100))(),
        "group": group(add.s(i, i) for i in range(5))(),
        "failed": fail.apply_async(
            ("bad",), link_error=[on_error_task_id.s(), on_error_request.s()]
        ),
    }
    if chords:  # Celery's rpc:// result backend has no chords
        started["chord"] = chord([add.s(i, 1) for i in range(4)], tsum.s())()
        started["chord_body_later"] = chord(add.s(i, 2) for i in range(3))(tsum.s())
    return started
