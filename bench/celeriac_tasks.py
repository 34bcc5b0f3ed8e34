"""The benchmark's no-op task for Celeriac.

Broker and results share the SQLite file named by ``CELERIAC_BROKER_URL`` (Celeriac reads it).
"""

from celeriac import Celeriac

app = Celeriac("bench")


@app.task
def echo(i: int) -> int:
    return i
