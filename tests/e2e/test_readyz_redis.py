"""/readyz follows the broker: a Redis worker whose connections go through a TCP proxy turns
unready within 5 s of the proxy cutting them and refusing new ones, and ready again once the
proxy lets connections through."""

from __future__ import annotations

import time
import uuid

import pytest

from tests import redis_support
from tests.conftest import service_url
from tests.faults.proxy import FaultProxy

from .conftest import Env, wait_for
from .observe_support import get, samples, start_observed

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def test_readyz_turns_unready_within_5s_of_losing_redis_and_ready_after(tmp_path):
    from urllib.parse import urlsplit

    proxy = FaultProxy(urlsplit(service_url("redis")).port or 6379)
    prefix = redis_support.new_prefix()
    env = Env(tmp_path)
    url = f"redis://127.0.0.1:{proxy.port}/{redis_support.DB}?global_keyprefix={prefix}"
    env.env.update(CELERIAC_BROKER_URL=url, CELERIAC_RESULT_BACKEND=url)
    try:
        queue = f"r-{uuid.uuid4().hex}"
        proc, port = start_observed(env, "-P", "prefork", "-c", "1", "-Q", queue)
        wait_for(lambda: get(port, "/readyz")[0] == 200, 10, "the worker to be ready")
        found = samples(get(port, "/metrics")[1])
        assert found[f'celeriac_queue_depth{{queue="{queue}"}}'] == 0
        # A Redis message carries no time: no age sample rather than a guess.
        assert not any(k.startswith("celeriac_queue_oldest_age_seconds") for k in found)

        proxy.refusing = True  # Redis is gone: open connections cut, new ones refused
        proxy.cut()
        gone = time.monotonic()
        wait_for(lambda: get(port, "/readyz")[0] == 503, 5, "/readyz to say unready")
        took = time.monotonic() - gone
        status, body = get(port, "/readyz")
        assert status == 503 and body.startswith("not ready: broker:"), body
        assert get(port, "/livez")[0] == 200  # alive all along: only the broker is gone

        proxy.refusing = False
        back = time.monotonic()
        wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), 10, "/readyz to say ready")
        print(f"unready after {took:.2f}s, ready again after {time.monotonic() - back:.2f}s")
        assert env.stop_worker(proc) == 0  # a warm stop removes its metrics directory
    finally:
        env.close()
        proxy.close()
        redis_support.drop(prefix)
