"""The memcached result backend on private memcached servers: what the contract suite does not
cover (tests/backends/test_contract.py runs that on memcached too), and the README's promises."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from celeriac import Celeriac, exceptions
from celeriac.backends import ChordPart, EncodedResult, create_backend
from celeriac.result import AsyncResult
from celeriac.transports.memcached import backend as backend_module
from celeriac.transports.memcached.backend import ITEM_OVERHEAD, MemcachedBackend
from celeriac.transports.memcached.connection import parse_servers
from celeriac.transports.memcached.options import MemcachedOptions
from tests.memcached_support import MemcachedServer, start_memcached

pytestmark = pytest.mark.memcached
ROOT = Path(__file__).resolve().parents[3]


def open_backend(url: str, expires: float | None = 86400.0, **options: object) -> MemcachedBackend:
    opts = {"key_prefix": f"{uuid.uuid4().hex}:", **options}
    backend = create_backend(url, expires=expires, transport_options=opts)
    assert isinstance(backend, MemcachedBackend)
    return backend


@pytest.fixture
def backend(memcached_server: MemcachedServer) -> Iterator[MemcachedBackend]:
    b = open_backend(memcached_server.url)
    yield b
    b.close()


def raw(server: MemcachedServer) -> Client:
    return Client(("127.0.0.1", server.port), default_noreply=False)


def part(b: MemcachedBackend, gid: str, index: int, size: int | None = None) -> ChordPart:
    meta = b.encode_meta({"status": "SUCCESS", "result": index, "task_id": f"{gid}-{index}"})
    return ChordPart(gid, index, f"{gid}-{index}", "SUCCESS", meta, size)


# -- URLs, options, the registry ---------------------------------------------------------------
def test_urls_name_one_or_several_servers() -> None:
    assert parse_servers("memcached://h1:11311;h2:11411/") == [("h1", 11311), ("h2", 11411)]
    assert parse_servers("cache+memcached://h1,[::1]:11311") == [("h1", 11211), ("::1", 11311)]
    with pytest.raises(exceptions.ConfigurationError, match="names no memcached server"):
        parse_servers("memcached://")
    with pytest.raises(exceptions.ConfigurationError, match="no user or password") as info:
        parse_servers("memcached://u:s3cret@h1:11211")
    assert "s3cret" not in str(info.value)


def test_a_memcached_broker_url_is_a_configuration_error(tmp_path: Path) -> None:
    for url in ("memcached://127.0.0.1:11211", "cache+memcached://127.0.0.1:11211"):
        app = Celeriac("t", broker_url=url, result_backend=url)
        with pytest.raises(exceptions.ConfigurationError, match="stores results only"):
            app.broker  # noqa: B018 - opening it is the test
        app.close()


def test_a_worker_given_a_memcached_broker_exits_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "mc_app.py").write_text("from celeriac import Celeriac\napp = Celeriac('mc')\n")
    env = {**os.environ, "CELERIAC_BROKER_URL": "memcached://127.0.0.1:1"}
    for pool in ("prefork", "threads"):
        done = subprocess.run(
            [sys.executable, "-m", "celeriac", "-A", "mc_app:app", "worker", "-P", pool],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert "Error: memcached:// stores results only" in done.stderr + done.stdout


def test_options_are_typed_and_a_typo_is_an_error(memcached_server: MemcachedServer) -> None:
    with pytest.raises(exceptions.ConfigurationError, match="did you mean 'key_prefix'"):
        create_backend(memcached_server.url, transport_options={"keyprefix": "x"})
    assert astuple(MemcachedOptions()) == (1024 * 1024, "", 2.0, 2.0, 0.1)  # as the README says
    b = open_backend("cache+" + memcached_server.url, item_size_max="2097152")
    assert b.max_item_size == 2 * 1024 * 1024 - ITEM_OVERHEAD
    b.store_result("t1", 4, "SUCCESS")  # Celery's spelling of the URL
    assert b.get_meta("t1")["result"] == 4
    b.close()


def test_the_extra_and_the_readme_name_the_options() -> None:
    from celeriac.transports.options import option_names

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'memcached = ["pymemcache>=' in pyproject
    readme = (ROOT / "README.md").read_text().split("### memcached results", 1)[1]
    for name in option_names(MemcachedOptions):
        assert f"`{name}`" in readme.split("\n#", 1)[0]


# -- keys and expiry ---------------------------------------------------------------------------
def test_results_are_under_celerys_key_with_result_expires_as_ttl(
    memcached_server: MemcachedServer,
) -> None:
    for expires, ttls in ((86400.0, {86400, 86401}), (0.2, {1, 2}), (None, {-1})):
        b = open_backend(memcached_server.url, expires=expires)
        b.store_result("t1", 4, "SUCCESS")
        key = f"{b.options.key_prefix}celery-task-meta-t1"
        reply = raw(memcached_server).raw_command(f"mg {key} t".encode(), b"\r\n")
        assert reply.startswith(b"HD t")
        assert int(reply[4:]) in ttls, (expires, reply)
        b.close()


def test_expiry_over_30_days_is_sent_as_a_unix_time(memcached_server: MemcachedServer) -> None:
    # memcached reads a TTL over 30 days as a Unix time: 40 days as seconds would be 1970.
    b = open_backend(memcached_server.url, expires=40 * 86400.0)
    b.store_result("t1", 4, "SUCCESS")
    assert b.get_meta("t1")["result"] == 4
    b.close()


def test_ids_memcached_would_refuse_as_keys_still_work(backend: MemcachedBackend) -> None:
    for task_id in ("with space", "x" * 300, "naïve", "new\nline"):
        backend.store_result(task_id, task_id, "SUCCESS")
        assert backend.get_meta(task_id)["result"] == task_id
    assert backend.get_states(["with space", "x" * 300, "nobody"]) == {
        "with space": "SUCCESS",
        "x" * 300: "SUCCESS",
    }


# -- the item limit ----------------------------------------------------------------------------
def test_a_document_of_max_item_size_fits_and_one_over_the_server_limit_fails(
    backend: MemcachedBackend,
) -> None:
    assert backend.max_item_size == 1024 * 1024 - ITEM_OVERHEAD
    fits = b"x" * backend.max_item_size
    backend.store_encoded([EncodedResult("big", "SUCCESS", fits)])
    assert backend._load("big") == fits
    with pytest.raises(exceptions.BackendError, match="too large"):
        backend.store_encoded([EncodedResult("huge", "SUCCESS", b"x" * (1024 * 1024 + 1))])


def test_item_size_max_follows_a_server_started_with_a_bigger_item_limit() -> None:
    server = start_memcached("-I", "2m")
    try:
        b = open_backend(server.url, item_size_max=2 * 1024 * 1024)
        fits = b"x" * b.max_item_size
        b.store_encoded([EncodedResult("big", "SUCCESS", fits)])
        assert b._load("big") == fits
        b.close()
    finally:
        server.stop()


# -- waiting -----------------------------------------------------------------------------------
def test_a_wait_polls_at_5ms_doubling_to_polling_interval(
    backend: MemcachedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    sleep = time.sleep

    def recorded(seconds: float) -> None:
        pauses.append(round(seconds, 6))
        sleep(seconds)

    monkeypatch.setattr(backend_module.time, "sleep", recorded)
    with pytest.raises(exceptions.TimeoutError):
        backend.wait_for("never", timeout=0.6)
    assert pauses[:6] == [0.005, 0.01, 0.02, 0.04, 0.08, 0.1]
    assert set(pauses[6:-1]) == {0.1}  # the last is cut to the timeout


# -- chords ------------------------------------------------------------------------------------
def test_each_part_counts_once_and_one_caller_claims_under_concurrency(
    memcached_server: MemcachedServer,
) -> None:
    """8 threads, each with its own connection, deliver all 20 parts in their own order."""
    first = open_backend(memcached_server.url)
    prefix = first.options.key_prefix
    backends = [first] + [open_backend(memcached_server.url, key_prefix=prefix) for _ in range(7)]
    first.chord_start("cg", 20)
    claimers: list[str] = []  # the part of each call that claimed

    def deliver(b: MemcachedBackend, seed: int) -> None:
        order = list(range(20))
        random.Random(seed).shuffle(order)
        for i in order:
            if b.chord_record([part(b, "cg", i)]) == ["cg"]:
                claimers.append(f"cg-{i}")

    threads = [threading.Thread(target=deliver, args=(b, n)) for n, b in enumerate(backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # One part claims; its redeliveries claim again (its worker may have died), nobody else.
    key = f"{prefix}celery-taskset-meta-cg"
    claimer = raw(memcached_server).get(key + ".c")
    assert claimer is not None and set(claimers) == {claimer.decode()}
    assert raw(memcached_server).get(key + ".n") == b"20"  # each part counted once
    assert [r.task_id for r in first.chord_results("cg")] == [f"cg-{i}" for i in range(20)]
    for b in backends:
        b.close()


def test_one_delivery_of_each_part_gives_exactly_one_claim(
    memcached_server: MemcachedServer,
) -> None:
    first = open_backend(memcached_server.url)
    backends = [first] + [
        open_backend(memcached_server.url, key_prefix=first.options.key_prefix) for _ in range(3)
    ]
    first.chord_start("cg", 40)
    claims: list[str] = []
    barrier = threading.Barrier(4)

    def deliver(b: MemcachedBackend, n: int) -> None:
        barrier.wait(5)
        for i in range(n, 40, 4):
            claims.extend(b.chord_record([part(b, "cg", i)]))

    threads = [threading.Thread(target=deliver, args=(b, n)) for n, b in enumerate(backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert claims == ["cg"]
    for b in backends:
        b.close()


def test_a_part_that_died_between_add_and_incr_completes_the_chord_when_redelivered(
    backend: MemcachedBackend, memcached_server: MemcachedServer
) -> None:
    backend.chord_start("cg", 2)
    p1 = part(backend, "cg", 1)
    key = f"{backend.options.key_prefix}celery-taskset-meta-cg"
    raw(memcached_server).add(f"{key}.p1", backend_module._pack(p1))  # added, never counted
    assert backend.chord_record([part(backend, "cg", 0)]) == []  # the count says 1 of 2
    assert backend.chord_record([p1]) == ["cg"]  # redelivered: the parts say complete
    results = backend.chord_results("cg")
    assert [backend.decode_meta(r.meta)["result"] for r in results] == [0, 1]


def test_a_chord_started_by_its_parts_size_completes(backend: MemcachedBackend) -> None:
    assert backend.chord_record([part(backend, "cg", 0, size=2)]) == []
    assert backend.chord_record([part(backend, "cg", 1, size=2)]) == ["cg"]


# -- several servers ---------------------------------------------------------------------------
def test_keys_spread_over_servers_a_chord_on_one_and_a_dead_server_fails_alone() -> None:
    a, b = start_memcached(), start_memcached()
    try:
        url = f"memcached://127.0.0.1:{a.port};127.0.0.1:{b.port}"
        backend = open_backend(url)
        ids = [f"t{i}" for i in range(40)]
        for task_id in ids:
            backend.store_result(task_id, task_id, "SUCCESS")
        prefix = backend.options.key_prefix
        held = {
            s.port: {t for t in ids if raw(s).get(f"{prefix}celery-task-meta-{t}") is not None}
            for s in (a, b)
        }
        assert held[a.port] and held[b.port] and held[a.port] | held[b.port] == set(ids)
        assert not held[a.port] & held[b.port]

        backend.chord_start("cg", 3)
        assert [backend.chord_record([part(backend, "cg", i)]) for i in range(3)] == [
            [],
            [],
            ["cg"],
        ]
        chord_key = f"{prefix}celery-taskset-meta-cg"
        on = [s for s in (a, b) if raw(s).get(chord_key + ".p0") is not None]
        assert len(on) == 1
        assert all(raw(on[0]).get(f"{chord_key}.{k}") is not None for k in ("s", "n", "p1", "p2"))

        b.stop()
        for t in held[a.port]:
            assert backend.get_meta(t)["result"] == t
        lost = next(iter(held[b.port]))
        with pytest.raises(exceptions.BackendError, match=f"127.0.0.1:{b.port}"):
            backend.get_meta(lost)
        backend.close()
    finally:
        a.stop()
        b.stop()


# -- eviction and restarts: the README's promises ----------------------------------------------
def _assert_gone_reads_as_pending(backend: MemcachedBackend, task_id: str) -> None:
    result: AsyncResult[int] = AsyncResult(task_id, backend=backend)
    assert result.state == "PENDING"
    started = time.monotonic()
    with pytest.raises(exceptions.TimeoutError, match="state PENDING"):
        result.get(timeout=0.5)
    assert 0.5 <= time.monotonic() - started <= 0.5 + 0.25


def test_a_result_flushed_or_lost_in_a_restart_reads_as_pending(
    private_memcached: MemcachedServer,
) -> None:
    backend = open_backend(private_memcached.url)
    backend.store_result("t1", 4, "SUCCESS")
    raw(private_memcached).flush_all()
    _assert_gone_reads_as_pending(backend, "t1")

    backend.store_result("t2", 5, "SUCCESS")
    private_memcached.restart()
    _assert_gone_reads_as_pending(backend, "t2")
    backend.store_result("t3", 6, "SUCCESS")  # the dropped connection is reopened, no error
    assert backend.get_meta("t3")["result"] == 6
    backend.close()


def test_an_evicted_result_reads_as_pending_and_get_keeps_waiting() -> None:
    server = start_memcached("-m", "2")  # 2 MB: filling it evicts the least recently used
    try:
        backend = open_backend(server.url)
        backend.store_result("t1", 4, "SUCCESS")  # not read: a read item is kept a while longer
        filler = raw(server)
        for i in range(40):  # items of every size near the result's, ~9 MB in all
            filler.set_many({f"fill-{i}-{j}": b"x" * (60 + j % 35 * 10) for j in range(1000)})
        assert int(filler.stats()[b"evictions"]) > 0
        _assert_gone_reads_as_pending(backend, "t1")

        # get() without a timeout keeps waiting, and returns a result stored again
        result: AsyncResult[int] = AsyncResult("t1", backend=backend)
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(result.get()), daemon=True)
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and got == []
        backend.store_result("t1", 7, "SUCCESS")
        waiter.join(5)
        assert got == [7]
        backend.close()
    finally:
        server.stop()


def test_a_chord_that_lost_header_results_never_claims(
    private_memcached: MemcachedServer,
) -> None:
    backend = open_backend(private_memcached.url)
    backend.chord_start("cg", 2)
    assert backend.chord_record([part(backend, "cg", 0, size=2)]) == []
    raw(private_memcached).flush_all()
    assert backend.chord_record([part(backend, "cg", 1, size=2)]) == []
    assert backend.chord_record([part(backend, "cg", 1, size=2)]) == []  # redelivered too
    with pytest.raises(exceptions.BackendError, match=r"header results \[0\] are gone"):
        backend.chord_results("cg")
    backend.close()
