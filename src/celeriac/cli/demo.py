"""``celeriac demo``: a worker and a client on an embedded SQLite file, end to end."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def run_demo(count: int, concurrency: int, workdir: str | None) -> int:
    console = Console()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="celeriac-demo-")
        workdir = tmp.name
    path = Path(workdir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    db = path / "demo.sqlite3"
    for leftover in path.glob("demo.sqlite3*"):
        leftover.unlink()
    url = f"sqlite:///{db}"
    os.environ["CELERIAC_BROKER_URL"] = url
    from celeriac.cli import demo_tasks as tasks

    tasks.app.conf.update(broker_url=url)
    console.print(f"[bold]Celeriac demo[/]: broker and results in [cyan]{db}[/]")
    log = open(path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celeriac",
            "-A",
            "celeriac.cli.demo_tasks:app",
            "worker",
            "-c",
            str(concurrency),
            "-l",
            "info",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CELERIAC_BROKER_URL": url},
    )
    ok = True
    try:
        ok = _run(console, tasks, count, concurrency, worker)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        tasks.app.close()
        if tmp is not None:
            tmp.cleanup()
        else:
            console.print(f"worker log: {path / 'worker.log'}")
    console.print(
        "[bold green]demo finished: every task accounted for[/]"
        if ok
        else "[bold red]demo found a problem (see above)[/]"
    )
    return 0 if ok else 1


def _run(
    console: Console, tasks: object, count: int, concurrency: int, worker: subprocess.Popen[bytes]
) -> bool:
    t = tasks
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        sending = progress.add_task("sending", total=count)
        done = progress.add_task("completed", total=count)
        started = time.perf_counter()
        results = []
        for i in range(count):
            results.append(t.add.delay(i, i))  # type: ignore[attr-defined]
            if i % 50 == 0:
                progress.update(sending, completed=i + 1)
        progress.update(sending, completed=count)
        sent_at = time.perf_counter()
        wrong = 0
        for i, r in enumerate(results):
            if r.get(timeout=120) != 2 * i:
                wrong += 1
            if i % 50 == 0 or i == count - 1:
                progress.update(done, completed=i + 1)
        finished = time.perf_counter()
        if worker.poll() is not None:
            console.print("[red]the worker exited early; see worker.log[/]")
            return False

    latencies = []
    for i in range(50):
        t0 = time.perf_counter()
        t.add.delay(i, 1).get(timeout=30)  # type: ignore[attr-defined]
        latencies.append((time.perf_counter() - t0) * 1000)

    chain = (t.add.s(2, 3) | t.mul.s(10) | t.add.s(1)).apply_async()  # type: ignore[attr-defined]
    flaky = t.flaky.delay(2)  # type: ignore[attr-defined]
    failing = t.divide.delay(1, 0)  # type: ignore[attr-defined]
    sent = time.time()
    later = t.stamp.apply_async(countdown=1)  # type: ignore[attr-defined]
    rows = [
        ("chain add(2,3) | mul(10) | add(1)", repr(chain.get(timeout=30)), "51"),
        (
            "flaky task, fails twice then retries",
            repr(flaky.get(timeout=30)),
            "'succeeded after 2 retries'",
        ),
    ]
    try:
        failing.get(timeout=30)
        rows.append(("divide(1, 0)", "no error", "ZeroDivisionError"))
    except ZeroDivisionError as exc:
        rows.append(
            ("divide(1, 0) re-raised here", f"ZeroDivisionError({exc})", "ZeroDivisionError")
        )
    delay = later.get(timeout=30) - sent
    rows.append(("countdown=1", f"ran after {delay:.2f}s", ">= 1s"))

    table = Table(title="What happened")
    table.add_column("call")
    table.add_column("result")
    table.add_column("expected")
    for row in rows:
        table.add_row(*row)
    console.print(table)

    summary = Table(title=f"{count} tasks, prefork worker -c {concurrency}, SQLite")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_row("enqueue rate", f"{count / (sent_at - started):,.0f} tasks/s")
    summary.add_row("end-to-end throughput", f"{count / (finished - started):,.0f} tasks/s")
    summary.add_row(
        "round trip p50 / p99",
        f"{statistics.median(latencies):.1f} / "
        f"{sorted(latencies)[int(len(latencies) * 0.99) - 1]:.1f} ms",
    )
    summary.add_row("wrong results", str(wrong))
    console.print(summary)
    return (
        wrong == 0
        and rows[0][1] == "51"
        and rows[1][1] == rows[1][2]
        and rows[2][1].startswith("ZeroDivisionError")
        and delay >= 1.0
    )
