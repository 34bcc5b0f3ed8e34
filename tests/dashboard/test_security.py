"""Who may use the dashboard: credentials beyond loopback, CSRF on every button, Host checks.

The app runs in this process (Starlette's TestClient) without its background threads, on the
memory broker.
"""

from __future__ import annotations

import base64
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from celeriac import Celeriac
from celeriac.cli.main import cli
from celeriac.dashboard import DashboardConfig, create_app
from celeriac.exceptions import ConfigurationError

from .support import HERE

PURGE = "/dead-letters/purge"


def client(tmp_path: Path, **config: object) -> TestClient:
    app = Celeriac("sec", broker_url="memory://", result_backend=None)
    cfg = DashboardConfig(history_url=f"sqlite:///{tmp_path / 'h.sqlite3'}", **config)  # type: ignore[arg-type]
    return TestClient(create_app(app, cfg, background=False), base_url="http://127.0.0.1:5555")


def csrf(c: TestClient, **kw: object) -> str:
    page = c.get("/", **kw)  # type: ignore[arg-type]
    found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert found, page.text[:300]
    return found.group(1)


@pytest.fixture
def open_client(tmp_path: Path) -> Iterator[TestClient]:
    with client(tmp_path) as c:
        yield c


def test_on_loopback_pages_open_without_credentials(open_client: TestClient) -> None:
    assert open_client.get("/").status_code == 200
    assert open_client.get("/tasks").status_code == 200


def test_a_foreign_host_header_is_refused_on_loopback(open_client: TestClient) -> None:
    # A page elsewhere reaching 127.0.0.1 through a rebound DNS name
    r = open_client.get("/", headers={"Host": "evil.example:5555"})
    assert (r.status_code, r.text) == (400, "this dashboard answers on a loopback address only")


def test_a_post_without_the_csrf_token_is_refused(open_client: TestClient) -> None:
    r = open_client.post(PURGE, data={}, follow_redirects=False)
    assert (r.status_code, r.text) == (403, "missing or wrong CSRF token: reload the page")
    r = open_client.post(PURGE, data={"csrf": "0" * 64}, follow_redirects=False)
    assert r.status_code == 403


def test_a_post_from_a_foreign_origin_is_refused_even_with_the_token(
    open_client: TestClient,
) -> None:
    token = csrf(open_client)
    for header in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}):
        r = open_client.post(PURGE, data={"csrf": token}, headers=header, follow_redirects=False)
        assert (r.status_code, r.text) == (403, "cross-site request refused")


def test_a_same_origin_post_with_the_token_is_done(open_client: TestClient) -> None:
    token = csrf(open_client)
    r = open_client.post(
        PURGE,
        data={"csrf": token},
        headers={"Origin": "http://127.0.0.1:5555"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/dead-letters?notice=deleted%200%20dead%20letter%28s%29"
    r = open_client.post(PURGE, headers={"X-CSRF-Token": token}, follow_redirects=False)
    assert r.status_code == 303  # a script's POST: the token in a header


def test_a_token_is_required_when_configured(tmp_path: Path) -> None:
    with client(tmp_path, token="s3cret") as c:
        assert c.get("/", headers={"Accept": "application/json"}).status_code == 401
        r = c.get("/tasks", headers={"Accept": "text/html"}, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/login?next=/tasks")
        assert c.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # the login form: a wrong token sets no cookie, the right one a session cookie
        token = csrf(c, headers={"Authorization": "Bearer s3cret"})
        wrong = c.post("/login", data={"csrf": token, "token": "x"}, follow_redirects=False)
        assert "set-cookie" not in wrong.headers
        assert c.get("/", headers={"Accept": "application/json"}).status_code == 401
        right = c.post(
            "/login",
            data={"csrf": token, "token": "s3cret", "next": "/tasks"},
            follow_redirects=False,
        )
        assert (right.status_code, right.headers["location"]) == (303, "/tasks")
        assert "samesite=strict" in right.headers["set-cookie"].lower()
        assert "httponly" in right.headers["set-cookie"].lower()
        assert c.get("/tasks").status_code == 200  # the cookie
        # authenticated, but from another site: refused
        r = c.post(PURGE, data={"csrf": token}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403


def test_basic_auth_when_configured(tmp_path: Path) -> None:
    def basic(user_pass: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}

    with client(tmp_path, basic_auth="ops:pw") as c:
        r = c.get("/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="celeriac dashboard"'
        assert c.get("/", headers=basic("ops:wrong")).status_code == 401
        assert c.get("/", headers=basic("ops:pw")).status_code == 200
        # with credentials the Host header may name the machine: it listens beyond loopback
        assert c.get("/", headers={**basic("ops:pw"), "Host": "dash.example"}).status_code == 200


def test_listening_beyond_loopback_without_credentials_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    result = CliRunner().invoke(cli, ["-A", "dash_tasks:app", "dashboard", "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "beyond this machine, with no credentials" in result.output
    with pytest.raises(ConfigurationError):
        DashboardConfig(host="10.1.2.3").check_exposure()
    DashboardConfig(host="0.0.0.0", token="t").check_exposure()
    DashboardConfig(host="0.0.0.0", basic_auth="a:b").check_exposure()
    DashboardConfig(host="::1").check_exposure()
    DashboardConfig(host="localhost").check_exposure()
