"""The dashboard in headless Chromium, against a real worker (-E) on a private SQLite broker.

One worker (prefork, one child) and one dashboard process serve every test here; the last test
restarts the dashboard. Screenshots are kept under pytest's temporary directory (paths printed).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from .support import (
    CHROMEDRIVER,
    CHROMIUM,
    HERE,
    Stack,
    browser,
    get,
    live_updates,
    screenshot,
    text,
    wait_for,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)) and not os.environ.get("CI"),
        reason="chromium and chromium-driver are not installed (CI installs them)",
    ),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("dashboard"))
    try:
        stack.start_worker()
        stack.start_dashboard()
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    d = browser(tmp_path_factory.mktemp("screenshots"))
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def tasks(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(HERE))
    import dash_tasks

    dash_tasks.app.conf.update(broker_url=stack.url)
    dash_tasks.app.close()
    yield dash_tasks
    dash_tasks.app.close()


def row(task_id: str) -> str:
    return f'tr[data-task="{task_id}"]'


def test_the_dashboard_lists_the_running_worker(stack: Stack, driver: Any) -> None:
    driver.get(stack.base + "/")
    worker = f'tr[data-worker="{stack.node}"]'
    wait_for(lambda: text(driver, f"{worker} .status") == "online", 15, "the worker, online")
    # pool and concurrency come from remote control (inspect stats), polled every few seconds
    wait_for(lambda: text(driver, f"{worker} td:nth-child(3)") == "prefork", 15, "its pool")
    assert text(driver, f"{worker} td:nth-child(4)") == "1"
    assert re.fullmatch(
        r"\d+\.\d\d \d+\.\d\d \d+\.\d\d", text(driver, f"{worker} td:nth-child(7)") or ""
    )
    assert re.fullmatch(r"\d+\.\ds ago", text(driver, f"{worker} td:nth-child(8)") or "")
    screenshot(driver, "workers")


def test_a_task_moves_from_started_to_success_without_a_reload(
    stack: Stack, driver: Any, tasks: Any
) -> None:
    driver.get(stack.base + "/tasks")
    driver.execute_script("window.notReloaded = 'yes';")
    result = tasks.sleepy.apply_async((1.5,), queue=stack.queue)
    state = f"{row(result.id)} .state"
    wait_for(lambda: text(driver, state) == "STARTED", 20, "STARTED on screen")
    screenshot(driver, "task-started")
    mark = "window.startedRow = document.querySelector(arguments[0]);"
    driver.execute_script(mark, row(result.id))
    wait_for(lambda: text(driver, state) == "SUCCESS", 20, "SUCCESS on screen")
    screenshot(driver, "task-succeeded")
    assert driver.execute_script("return window.notReloaded;") == "yes"
    # the row was updated in place, not drawn again
    same = "return document.querySelector(arguments[0]) === window.startedRow;"
    assert driver.execute_script(same, row(result.id)) is True
    # a new row is inserted beside it; the kept row still shows its own task
    later = tasks.add.apply_async((20, 22), queue=stack.queue)
    wait_for(lambda: text(driver, f"{row(later.id)} .state") == "SUCCESS", 20, "the new row")
    assert driver.execute_script(same, row(result.id)) is True
    assert driver.execute_script("return window.startedRow.dataset.task;") == result.id
    assert text(driver, f"{row(result.id)} .result") == "1.5"
    assert text(driver, f"{row(result.id)} .args") == "(1.5,)"


def test_revoking_a_queued_task_with_its_button(stack: Stack, driver: Any, tasks: Any) -> None:
    from selenium.webdriver.common.by import By

    blocker = tasks.sleepy.apply_async((3.0,), queue=stack.queue)
    queued = tasks.add.apply_async((1, 2), queue=stack.queue)
    driver.get(stack.base + "/tasks")
    # The worker's only slot is busy: the second task waits, in the queue or (leased with the
    # first, then given back once the first ran past worker_fair_after) received but not started.
    wait_for(lambda: text(driver, f"{row(blocker.id)} .state") == "STARTED", 20, "the blocker")
    assert text(driver, f"{row(queued.id)} .state") in ("PENDING", "RECEIVED")
    driver.get(f"{stack.base}/tasks/{queued.id}")
    driver.find_element(By.ID, "revoke").click()
    wait_for(lambda: text(driver, "#notice") == "revoke sent", 10, "the notice")
    wait_for(lambda: text(driver, "#task-state") == "REVOKED", 20, "REVOKED on screen")
    screenshot(driver, "task-revoked")
    assert blocker.get(timeout=20) == 3.0
    assert tasks.add.apply_async((2, 2), queue=stack.queue).get(timeout=20) == 4  # queue flows
    assert stack.runs(queued.id) == 0
    assert stack.runs(blocker.id) == 1


def test_a_dead_lettered_message_is_replayed_with_its_button(
    stack: Stack, driver: Any, tasks: Any
) -> None:
    from selenium.webdriver.common.by import By

    result = tasks.reject_first.apply_async(queue=stack.queue)
    wait_for(
        lambda: [d for d in tasks.app.broker.dead_letters() if d.message.task_id == result.id],
        20,
        "the dead letter",
    )
    driver.get(stack.base + "/dead-letters")
    wait_for(lambda: text(driver, f"{row(result.id)} .reason"), 10, "the dead letter on screen")
    assert "set aside on first delivery" in (text(driver, f"{row(result.id)} .reason") or "")
    screenshot(driver, "dead-letter")
    button = driver.find_element(By.CSS_SELECTOR, f"{row(result.id)} button.replay")
    # An update that changes nothing keeps the page's elements: a click is never lost to one.
    live_updates(driver, 2)
    button.click()
    wait_for(lambda: text(driver, "#notice") == "replayed 1 message(s)", 10, "the notice")
    assert result.get(timeout=20) == "replayed"
    assert stack.runs(result.id) == 1
    assert tasks.app.broker.dead_letters() == []
    driver.get(f"{stack.base}/tasks/{result.id}")
    wait_for(lambda: text(driver, "#task-state") == "SUCCESS", 20, "SUCCESS after the replay")
    screenshot(driver, "dead-letter-replayed")


def test_masked_arguments_are_shown_as_stars(stack: Stack, tasks: Any) -> None:
    # dash_tasks sets dashboard_masked_tasks = ["dash_tasks.secret_*"]
    result = tasks.secret_login.apply_async(("hunter2",), queue=stack.queue)
    assert result.get(timeout=20) == "ok"
    wait_for(
        lambda: (
            '<td class="state" id="task-state">SUCCESS' in get(f"{stack.base}/tasks/{result.id}")[1]
        ),
        20,
        "the task in the history",
    )
    body = get(f"{stack.base}/tasks/{result.id}")[1]
    assert '<td class="args"><code>***</code></td>' in body
    assert "hunter2" not in body


def _total(base: str) -> int:
    status, body = get(base + "/tasks")
    assert status == 200
    found = re.search(r"(\d+) task\(s\) in the history", body)
    assert found, body[:500]
    return int(found.group(1))


def test_the_history_survives_a_dashboard_restart(stack: Stack, driver: Any, tasks: Any) -> None:
    result = tasks.add.apply_async((5, 6), queue=stack.queue)
    assert result.get(timeout=20) == 11
    wait_for(
        lambda: 'class="state-SUCCESS"' in get(f"{stack.base}/tasks?q={result.id}")[1],
        20,
        "the task in the history",
    )
    before = _total(stack.base)
    # uvicorn shuts down on SIGTERM and then re-raises it (its exit status says so)
    assert stack.stop_dashboard() in (0, -15)
    assert "Traceback" not in stack.log("dashboard")
    stack.start_dashboard()
    assert _total(stack.base) == before
    driver.get(stack.base + "/tasks")
    wait_for(lambda: text(driver, f"{row(result.id)} .state") == "SUCCESS", 10, "the old task")
    assert text(driver, f"{row(result.id)} .result") == "11"
    screenshot(driver, "after-restart")
