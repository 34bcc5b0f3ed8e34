"""The client side of a worker's health endpoint, for ``celeriac health`` (an exec probe)."""

from __future__ import annotations

import http.client
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int | None
    detail: str


def check(host: str, port: int, path: str = "/readyz", timeout: float = 2.0) -> ProbeResult:
    """GET ``path`` on the worker's health port: ok when it answers 200 within ``timeout``."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace").strip()
        return ProbeResult(response.status == 200, response.status, body)
    except OSError as exc:
        return ProbeResult(False, None, f"no answer from {host}:{port}: {exc}")
    finally:
        conn.close()
