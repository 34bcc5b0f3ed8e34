"""The pages and buttons the browser tests do not click, in this process (Starlette's
TestClient) on a private SQLite broker: queues, retry, purge, beat, charts, retention, routes
added by other parts, the command's defaults."""

from __future__ import annotations

import re
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
from click.testing import CliRunner
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from celeriac import Celeriac
from celeriac.cli.dashboard import dashboard
from celeriac.cli.main import cli
from celeriac.dashboard import DashboardConfig, create_app
from celeriac.dashboard.config import masked_tasks

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]


class Site:
    def __init__(self, tmp: Path, **config: Any) -> None:
        self.queue = f"pages-{uuid.uuid4().hex[:8]}"
        self.app = Celeriac("pages", broker_url=f"sqlite:///{tmp / 'broker.sqlite3'}")
        self.app.conf.beat_schedule = {
            "tick": {"task": "pages.tick", "schedule": 60.0, "options": {"queue": self.queue}}
        }
        cfg = DashboardConfig(
            history_url=f"sqlite:///{tmp / 'history.sqlite3'}", queues=(self.queue,), **config
        )
        self.web = create_app(
            self.app,
            cfg,
            background=False,
            extra_routes=[Route("/extra", lambda r: PlainTextResponse("up 1\n"))],
        )
        self.dashboard = self.web.state.dashboard
        self.client = TestClient(self.web, base_url="http://127.0.0.1:5555")

    def csrf(self) -> str:
        found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', self.client.get("/").text)
        assert found
        return found.group(1)

    def post(self, path: str, **data: str) -> Any:
        return self.client.post(path, data={"csrf": self.csrf(), **data}, follow_redirects=False)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    with s.client:
        yield s
    s.app.close()


def test_queues_show_depth_and_the_oldest_waiting_message(site: Site) -> None:
    site.app.send_task("pages.tick", queue=site.queue)
    site.app.send_task("pages.tick", queue=site.queue)
    time.sleep(0.2)  # the oldest message's age must be measurably above zero
    site.dashboard.cluster.snapshot = site.dashboard.cluster.poll()  # the poll thread's work
    body = site.client.get("/queues").text
    found = re.search(
        rf'data-queue="{site.queue}">\s*<td>[^<]*</td>\s*<td class="depth">(\d+)</td>'
        r'\s*<td>[^<]*</td>\s*<td class="oldest">([0-9.]+)s</td>',
        body,
    )
    assert found, body
    assert found.group(1) == "2"
    assert 0.2 <= float(found.group(2)) < 10


def test_retry_sends_the_task_again_with_its_arguments(site: Site) -> None:
    site.dashboard.recorder.apply(
        [
            {
                "type": "task-sent",
                "uuid": "old",
                "name": "pages.add",
                "args": "(2, 3)",
                "kwargs": "{'z': 1}",
                "queue": site.queue,
                "timestamp": time.time(),
            },
        ]
    )
    r = site.post("/tasks/old/retry")
    assert r.status_code == 303
    new_id = re.search(r"/tasks/([0-9a-f-]{36})\?notice=sent", r.headers["location"])
    assert new_id, r.headers["location"]
    [delivery] = site.app.broker.fetch([site.queue], 10, timeout=1.0)
    assert delivery.message.task_id == new_id.group(1)
    assert delivery.message.headers["task"] == "pages.add"
    assert delivery.message.headers["argsrepr"] == "(2, 3)"
    assert delivery.message.headers["kwargsrepr"] == "{'z': 1}"
    site.app.broker.ack([delivery])


def test_the_task_list_searches_and_pages(tmp_path: Path) -> None:
    s = Site(tmp_path, page_size=2)
    now = time.time()
    s.dashboard.recorder.apply(
        [
            {"type": "task-received", "uuid": f"id-{i}", "name": f"p.{n}", "timestamp": now + i}
            for i, n in enumerate(["a", "b", "a", "a"])
        ]
    )
    with s.client:
        body = s.client.get("/tasks?q=p.a").text
        assert re.findall(r'data-task="([^"]+)"', body) == ["id-3", "id-2"]
        older = re.search(r'id="older" href="([^"]+)"', body)
        assert older
        body = s.client.get(older.group(1).replace("&amp;", "&")).text
        assert re.findall(r'data-task="([^"]+)"', body) == ["id-0"]
        assert 'id="older"' not in body
    s.app.close()


def test_purge_deletes_every_dead_letter(site: Site) -> None:
    for _ in range(2):
        site.app.send_task("pages.tick", queue=site.queue)
    for d in site.app.broker.fetch([site.queue], 10, timeout=1.0):
        site.app.broker.dead_letter(d, "test: set aside")
    assert "test: set aside" in site.client.get("/dead-letters").text
    r = site.post("/dead-letters/purge")
    assert r.headers["location"] == "/dead-letters?notice=deleted%202%20dead%20letter%28s%29"
    assert site.app.broker.dead_letters() == []


def test_beat_entries_pause_and_resume(site: Site) -> None:
    def state() -> str:
        body = site.client.get("/beat").text
        found = re.search(r'data-entry="tick">.*?<td class="paused">(\w+)</td>', body, re.S)
        assert found, body
        return found.group(1)

    assert state() == "active"
    row = re.search(r'data-entry="tick">(.*?)</tr>', site.client.get("/beat").text, re.S)
    assert row and re.search(r"<td>\d\d:\d\d:\d\d\.\d{3}</td>", row.group(1))  # next run
    assert site.post("/beat/tick/pause").headers["location"] == "/beat?notice=paused%20tick"
    assert state() == "paused"
    site.post("/beat/tick/resume")
    assert state() == "active"
    assert (
        site.post("/beat/nope/pause")
        .headers["location"]
        .startswith("/beat?notice=no%20beat%20entry%20named%20%27nope%27")
    )


def test_charts_count_what_finished_in_the_window(site: Site) -> None:
    now = time.time()
    site.dashboard.recorder.apply(
        [
            {"type": "task-succeeded", "uuid": f"s{i}", "runtime": 0.1 * i, "timestamp": now - i}
            for i in range(1, 6)
        ]
        + [
            {"type": "task-failed", "uuid": "f1", "timestamp": now - 3, "exception": "E()"},
            {"type": "task-succeeded", "uuid": "old", "timestamp": now - 7200, "runtime": 1.0},
        ]
    )
    body = site.client.get("/charts?window=5m").text
    assert "6 task(s) finished in the last 5m, 1 failed." in body
    for chart in ("throughput", "latency", "failures"):
        assert f'id="{chart}"' in body
    assert "7 task(s) finished in the last 24h" in site.client.get("/charts?window=24h").text


def test_the_recorder_drops_tasks_older_than_the_retention(tmp_path: Path) -> None:
    s = Site(tmp_path, retention=3600.0)
    now = time.time()
    s.dashboard.recorder.apply(
        [
            {"type": "task-received", "uuid": "old", "name": "p.x", "timestamp": now - 7200},
            {"type": "task-received", "uuid": "new", "name": "p.x", "timestamp": now - 60},
        ]
    )
    s.dashboard.recorder._maybe_prune()
    assert s.dashboard.history.get("old") is None
    assert s.dashboard.history.get("new") is not None
    s.dashboard.history.close()
    s.app.close()


def test_routes_added_by_other_parts_are_served_behind_the_same_guard(tmp_path: Path) -> None:
    s = Site(tmp_path, token="t0k")
    with s.client:
        assert s.client.get("/extra").status_code == 401
        r = s.client.get("/extra", headers={"Authorization": "Bearer t0k"})
        assert (r.status_code, r.text) == (200, "up 1\n")
    s.app.close()


def test_the_command_and_the_extra() -> None:
    assert CliRunner().invoke(cli, ["dashboard", "--help"]).exit_code == 0
    defaults = {p.name: p.default for p in dashboard.params}
    assert (defaults["host"], defaults["port"]) == ("127.0.0.1", 5555)
    assert defaults["history_url"] == "sqlite:///celeriac-dashboard.sqlite3"
    assert defaults["retention"] == 7 * 86400  # a week
    assert defaults["refresh"] == 1.0
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {d.split(">=")[0] for d in extras["dashboard"]} == {"starlette", "uvicorn", "jinja2"}
    assert masked_tasks(["a.*"], ("b.secret",)) == ("a.*", "b.secret")
    assert DashboardConfig(masked_tasks=("p.secret_*",)).masks("p.secret_login")
    assert not DashboardConfig(masked_tasks=("p.secret_*",)).masks("p.login")


def test_metrics_count_the_tasks_and_workers_the_events_told_of(site: Site) -> None:
    now = time.time()
    site.dashboard.recorder.apply(
        [
            {
                "type": "worker-heartbeat",
                "hostname": "w1@x",
                "timestamp": now,
                "active": 1,
                "freq": 2.0,
                "processed": 3,
            },
            {
                "type": "task-received",
                "uuid": "a",
                "name": "p.add",
                "hostname": "w1@x",
                "timestamp": now,
            },
            {
                "type": "task-succeeded",
                "uuid": "a",
                "runtime": 0.25,
                "hostname": "w1@x",
                "timestamp": now,
            },
            {
                "type": "task-received",
                "uuid": "b",
                "name": "p.add",
                "hostname": "w1@x",
                "timestamp": now,
            },
            {
                "type": "task-failed",
                "uuid": "b",
                "runtime": 0.5,
                "hostname": "w1@x",
                "timestamp": now,
                "exception": "E()",
            },
        ]
    )
    text = site.client.get("/metrics").text
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("celeriac_") and not line.startswith("celeriac_task_runtime_seconds_b")
    }
    assert lines['celeriac_tasks_total{hostname="w1@x",state="SUCCESS",task="p.add"}'] == 1
    assert lines['celeriac_tasks_total{hostname="w1@x",state="FAILURE",task="p.add"}'] == 1
    assert lines['celeriac_task_runtime_seconds_count{hostname="w1@x",task="p.add"}'] == 2
    assert lines['celeriac_task_runtime_seconds_sum{hostname="w1@x",task="p.add"}'] == 0.75
    assert lines['celeriac_worker_up{hostname="w1@x"}'] == 1
