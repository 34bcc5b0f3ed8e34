"""PostgreSQL for tests: a fresh schema per use (``?schema=`` in the URL), dropped afterwards.

The server is shared with other work, so tests never drop anything but the schemas they made:
every name carries :data:`PREFIX` and a random suffix.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

from tests.conftest import service_url

PREFIX = "celeriac_t_"


def new_schema() -> str:
    return f"{PREFIX}{uuid.uuid4().hex[:12]}"


def url_for(schema: str, scheme: str = "postgresql") -> str:
    base = service_url("postgres").split("://", 1)[1]
    sep = "&" if "?" in base else "?"
    return f"{scheme}://{base}{sep}schema={schema}"


def drop(schema: str) -> None:
    """Drop the schema and all it holds (only ever one a test made)."""
    import psycopg

    assert schema.startswith(PREFIX), schema
    with psycopg.connect(service_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_url(request: object) -> str:
    """A new schema's URL, dropped when ``request`` (a pytest request) finishes."""
    schema = new_schema()
    request.addfinalizer(lambda: drop(schema))  # type: ignore[attr-defined]
    return url_for(schema)


class PrivatePostgres:
    """A PostgreSQL server a test owns (``initdb`` in a temporary directory, a free port), so it
    may stop and restart it. Run as the ``postgres`` user: ``initdb`` and ``postgres`` refuse
    to run as root."""

    def __init__(self) -> None:
        import pwd
        import tempfile

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin = Path(bins[-1]).parent
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="celeriac-pg-"))
        user = pwd.getpwnam("postgres")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        opts += os.environ.get("CELERIAC_TEST_PG_OPTS", "")
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, what was committed stays."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            )
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
