"""CPU per task of a prefork worker's children over a drain alone (no start-up, no round trips).

    .venv/bin/python bench/drain_cpu.py {redis|sqlite|amqp} [N]

Enqueues N tasks (the same apps as ``redis_vs_peers.py``, ``sqlite_vs_huey.py`` and
``amqp_vs_peers.py``: ``amqp`` is RabbitMQ in a private vhost with results in Redis), starts
``worker -c 2`` (prefork), reads each child's utime + stime from /proc every 50 ms until N
results are there, and prints the drain rate and the children's CPU per task (user and system
apart) and the parent's, and the CPU per task of the servers it finds running on this machine
(``redis-server``, RabbitMQ's ``beam.smp``), which other work may share. A PYTHONPATH given to it
comes after the app folder: another checkout's src/ to compare. Redis keys go under a fresh
prefix on DB 14 and are deleted after; the vhost too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bytecode import compile_sources

HERE = Path(__file__).resolve().parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def _server_pids() -> dict[str, int]:
    """The Redis and RabbitMQ servers' processes on this machine, by name."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            name = (entry / "comm").read_text().strip()
            if name in ("redis-server", "beam.smp") and name not in found:
                found[name] = int(entry.name)
    return found


def _server_cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            out[name] = sum(_cpu(pid))
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _path(apps: Path) -> str:
    return os.pathsep.join(filter(None, [str(apps), os.environ.get("PYTHONPATH")]))


def _nothing() -> None:
    pass


def main() -> None:
    broker, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    compile_sources()
    cleanup: Callable[[], None] = _nothing
    if broker in ("redis", "amqp"):
        import redis

        apps, url = HERE / "redis_apps", "redis://127.0.0.1:6379/14"
        prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        env = {
            **os.environ,
            "PYTHONPATH": _path(apps),
            "BENCH_REDIS_URL": url,
            "BENCH_COUNT_URL": url,
            "BENCH_PREFIX": prefix,
            "BENCH_COUNT_KEY": f"{prefix}done",
        }
        client = redis.Redis.from_url(url)
        app, done = "celeriac_app:app", lambda: int(client.get(f"{prefix}done") or 0)
        vhost = ""
        if broker == "amqp":  # as amqp_vs_peers.py runs Celeriac: results in Redis
            vhost = f"bench-drain-{uuid.uuid4().hex[:10]}"
            _rabbitmqctl("add_vhost", vhost)
            _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            env |= {
                "PYTHONPATH": os.pathsep.join([str(HERE / "amqp_apps"), env["PYTHONPATH"]]),
                "BENCH_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                "BENCH_RESULTS": "redis",
            }
            app = "amqp_celeriac_app:app"

        def cleanup() -> None:  # replaces _nothing
            keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            if vhost:
                _rabbitmqctl("delete_vhost", vhost)

        system = "amqp_celeriac" if broker == "amqp" else "celeriac"
        send = [PY, str(apps / "client.py"), system, "enqueue", str(n)]
    else:
        apps, db = HERE, Path(tempfile.mkdtemp()) / "bench.db"
        env = {**os.environ, "PYTHONPATH": _path(apps), "CELERIAC_BROKER_URL": f"sqlite:///{db}"}
        app = "celeriac_tasks:app"

        def done() -> int:
            conn = sqlite3.connect(db, timeout=30)
            try:
                sql = "SELECT count(*) FROM celeriac_results WHERE status = 'SUCCESS'"
                return int(conn.execute(sql).fetchone()[0])
            except sqlite3.OperationalError:
                return 0
            finally:
                conn.close()

        send = [PY, str(apps / "client.py"), "celeriac", "enqueue", str(n)]
    try:
        # BENCH_CLIENT: an amqp client opens its result backend first, as Celery's does
        subprocess.run(
            send, env={**env, "BENCH_CLIENT": "1"}, cwd=apps, check=True, capture_output=True
        )
    except BaseException:
        cleanup()
        raise
    cmd = [PY, "-m", "celeriac", "-A", app, "worker", "-l", "warning", "-c", "2"]
    servers = _server_pids()
    servers_before = _server_cpu(servers)
    start = time.perf_counter()
    worker = subprocess.Popen(cmd, env=env, cwd=apps, start_new_session=True)
    try:
        first, used = None, {}
        while (count := done()) < n:
            if count and first is None:
                first = time.perf_counter()
            for pid in _children(worker.pid):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    used[pid] = _cpu(pid)  # a child that just ended keeps its last reading
            time.sleep(0.05)
        end = time.perf_counter()
        parent = sum(_cpu(worker.pid))
        servers_after = _server_cpu(servers)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        cleanup()
    user = sum(u for u, _ in used.values())
    system = sum(s for _, s in used.values())
    print(
        f"{broker} N={n}: drain {n / (end - start):,.0f}/s (after 1st result "
        f"{(n - 1) / (end - (first or start)):,.0f}/s); children CPU "
        f"{1e6 * (user + system) / n:.0f} us/task (user {1e6 * user / n:.0f}, system "
        f"{1e6 * system / n:.0f}); parent {1e6 * parent / n:.0f} us/task"
    )
    shared = ", ".join(
        f"{name} {1e6 * (servers_after[name] - before) / n:.0f} us/task"
        for name, before in servers_before.items()
        if name in servers_after
    )
    if shared:
        print(f"  servers over the same drain (shared with any other work): {shared}")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


if __name__ == "__main__":
    main()
