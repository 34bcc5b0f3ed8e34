"""Every wait on Redis has a bound: ``get(timeout=T)`` and ``delay()`` with the server stopped or
blackholed (a proxy that accepts connections and swallows everything), timed for real.

``get(timeout=T)`` raises within T + 0.5 s; ``delay()`` raises BrokerError within
``publish_timeout`` + 0.5 s (README, "Bounded waits").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.exceptions import BackendError, BrokerError
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from tests.proxy_support import Proxy
from tests.redis_support import PrivateRedis

pytestmark = pytest.mark.redis

MARGIN = 0.5


@dataclass
class Setup:
    server: PrivateRedis
    proxy: Proxy
    app: Celeriac
    add: Any

    def down(self, how: str) -> None:
        if how == "stopped":
            self.server.stop()
        else:
            self.proxy.blackhole = True


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    server = PrivateRedis(tmp_path)
    server.start()
    proxy = Proxy(("127.0.0.1", server.port))
    apps: list[Celeriac] = []

    def make(**options: Any) -> Setup:
        url = proxy.url()
        app = Celeriac("deadlines", broker_url=url, result_backend=url)
        app.conf.broker_transport_options = options
        apps.append(app)

        @app.task(name="deadlines.add")
        def add(x: int, y: int) -> int:
            return x + y

        return Setup(server, proxy, app, add)

    yield make
    for app in apps:
        app.close()
    proxy.close()
    server.stop()


def elapsed(call: Callable[[], object], error: type[Exception]) -> tuple[float, str]:
    started = time.monotonic()
    with pytest.raises(error) as info:
        call()
    return time.monotonic() - started, str(info.value)


@pytest.mark.parametrize("how", ["stopped", "blackholed"])
def test_get_with_a_timeout_raises_within_it_when_redis_is_gone(setup, how: str) -> None:
    s = setup()
    result = s.add.delay(1, 1)  # no worker: it stays pending
    assert result.state == "PENDING"  # connections open and pooled
    s.down(how)
    took, message = elapsed(lambda: result.get(timeout=2), BackendError)
    assert 2 <= took <= 2 + MARGIN, took
    assert message.startswith(f"reading result {result.id} from Redis failed")


@pytest.mark.parametrize("how", ["stopped", "blackholed"])
def test_get_keeps_its_timeout_when_redis_goes_while_it_waits(setup, how: str) -> None:
    s = setup()
    result = s.add.delay(1, 1)
    threading.Timer(0.5, s.down, (how,)).start()  # while get() listens on the result's channel
    took, _ = elapsed(lambda: result.get(timeout=2), BackendError)
    assert 2 <= took <= 2 + MARGIN, took


@pytest.mark.parametrize("how", ["stopped", "blackholed"])
def test_delay_raises_broker_error_within_publish_timeout(setup, how: str) -> None:
    s = setup(publish_timeout=1)
    s.add.delay(1, 1)
    s.down(how)
    took, message = elapsed(lambda: s.add.delay(1, 1), BrokerError)
    assert 1 - 0.1 <= took <= 1 + MARGIN, took  # its last attempt gets at least 50 ms
    assert message.startswith("Redis broker: publish failed (publish_timeout=1s): ")


def test_a_batch_publish_as_a_worker_sends_follow_ups_keeps_publish_timeout(setup) -> None:
    s = setup(publish_timeout=1)
    s.add.delay(1, 1)
    s.down("blackholed")
    message = build_task_message(default_registry, task_name="deadlines.add", task_id="f")
    batch = [Publication(message, Route(q)) for q in ("celery", "other")]
    took, error = elapsed(lambda: s.app.broker.publish_many(batch), BrokerError)
    assert 1 - 0.1 <= took <= 1 + MARGIN, took
    assert error.startswith("Redis broker: publishing 2 messages failed (publish_timeout=1s)")


def test_a_publish_rides_out_a_restart_shorter_than_publish_timeout(setup) -> None:
    s = setup()  # publish_timeout 5 s
    s.add.delay(1, 1)
    s.server.stop()
    threading.Timer(1.0, s.server.start).start()
    started = time.monotonic()
    result = s.add.delay(2, 2)
    assert 1 <= time.monotonic() - started <= 3
    assert s.app.broker.depth("celery") == 2
    assert result.state == "PENDING"


def test_a_call_without_a_deadline_is_retried_at_one_level_only(setup) -> None:
    # redis-py nests retries (the command, the connect in it, the health-check PING in the
    # connect's handshake): max_retries=2 made 3 x 3 attempts of 0.2 s each, and more.
    s = setup(socket_timeout=0.2, socket_connect_timeout=0.2, max_retries=2, retry_cap=0.1)
    s.down("blackholed")
    took, _ = elapsed(lambda: s.app.broker.depth("celery"), BrokerError)
    # 3 attempts of 0.2 s, 2 pauses of 0.1 s
    assert 0.8 <= took <= 0.8 + MARGIN, took
