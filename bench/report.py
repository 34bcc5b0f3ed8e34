"""Issue 19's performance report: three benches in one run, then docs/performance.{md,svg,json}.

    .venv/bin/python bench/report.py            # the full run: --repeat 3, each bench's own N
    .venv/bin/python bench/report.py --quick    # smoke run: small N, 1 repeat, marked as such
    .venv/bin/python bench/report.py --from-json docs/performance.json   # re-render only

Runs ``redis_vs_peers.py``, ``amqp_vs_peers.py``, ``amqp_publish.py`` and ``sqlite_vs_huey.py``
one after another
(events off: no ``-E`` rows), reads the JSON each writes (``--json``), takes the median of each
metric over the runs, and writes a table per broker, issue 19's targets with the measured value
and met / not met (computed here, from the medians), the machine line, and a chart
(``report_chart.py``). A peer whose package is not installed, or a bench that fails, gives rows
and targets that say "not measured", never a number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from report_chart import Group, Panel, render

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOT_MEASURED = "not measured"
BATCH = "batch_enqueue_per_s"  # Celeriac's batch API (``app.send_many``), where a bench has it


@dataclass(frozen=True)
class Row:
    """One system of a bench, as the report shows it."""

    role: str  # what targets call it: "celeriac", "huey", ...
    label: str
    system: str  # its name in the bench's JSON (and ``--systems``)
    needs: str = ""  # a package that must be importable to measure it


@dataclass(frozen=True)
class Target:
    """A bound from issue 19 on one metric of ``row``, or on its ratio to ``peer``'s."""

    metric: str
    op: str  # ">=" or "<="
    bound: float
    row: str = "celeriac"
    peer: str = ""  # a role: the bound is a ratio to that row's value of the same metric
    what: str = ""  # the row's variant the issue names, when it matters

    def describe(self, rows: dict[str, Row]) -> str:
        name = METRIC_LABELS[self.metric] + (f" ({self.what})" if self.what else "")
        if self.row != "celeriac":
            name = f"{rows[self.row].label}: {name}"
        if self.peer:
            times = f"{self.bound:g}x " if self.bound != 1 else ""
            return f"{name} {self.op} {times}{rows[self.peer].label}'s"
        return f"{name} {self.op} {fmt(self.bound)}{METRIC_UNITS[self.metric]}"


@dataclass(frozen=True)
class Bench:
    key: str
    broker: str
    script: str
    rows: list[Row]
    targets: list[Target]
    note: str
    full_args: list[str] = field(default_factory=list)
    quick_args: list[str] = field(default_factory=list)
    by_systems: bool = True  # the script takes ``--systems`` (sqlite_vs_huey.py does not)
    systems_flag: str = "--systems"  # how the script is told which rows to run
    extra: list[tuple[str, str]] = field(default_factory=list)  # more columns: (key, label)
    only: list[str] = field(default_factory=list)  # its columns, where not the usual ones
    chart: bool = True  # a panel in the drain/enqueue chart (not for a publish-only bench)


METRIC_LABELS = {
    "enqueue_per_s": "enqueue/s",
    "enqueue_confirmed_per_s": "enqueue/s with confirms",
    BATCH: "batch enqueue/s",
    "drain_per_s": "drain/s",
    "rt_p50_ms": "round trip p50 ms",
    "rt_p99_ms": "round trip p99 ms",
    "rss_mb": "worker RSS MB",
    "wall_us": "wall us per call",
    "cpu_us": "client CPU us per call",
}
METRIC_UNITS = (
    {"rt_p50_ms": " ms", "rt_p99_ms": " ms", "rss_mb": " MB"}
    | {
        "wall_us": " us",
        "cpu_us": " us",
    }
    | {k: "/s" for k in ("enqueue_per_s", "enqueue_confirmed_per_s", BATCH, "drain_per_s")}
)
COLUMNS = ["enqueue_per_s", BATCH, "drain_per_s", "rt_p50_ms", "rt_p99_ms", "rss_mb"]
RSS = Target("rss_mb", "<=", 60, what="prefork -c 2, after a drain")
QUICK = ["--n", "1000", "--calls", "30"]

BENCHES = [
    Bench(
        "redis",
        "Redis",
        "redis_vs_peers.py",
        [
            Row("celeriac", "Celeriac", "celeriac prefork -c 2"),
            # the same worker; its client enqueues with app.send_many, 1,000 calls a batch
            Row("celeriac_batch", "Celeriac send_many", "celeriac prefork -c 2, send_many"),
            Row("huey", "Huey", "huey -k process -w 2", needs="huey"),
            Row("celery", "Celery", "celery prefork -c 2", needs="celery"),
        ],
        [
            Target("drain_per_s", ">=", 7000),
            Target("drain_per_s", ">=", 2, peer="huey"),
            Target("enqueue_per_s", ">=", 1.2, peer="huey", what="one call at a time"),
            Target("enqueue_per_s", ">=", 50_000, row="celeriac_batch"),
            Target("rt_p50_ms", "<=", 0.6),
            RSS,
        ],
        "Broker and results on one Redis; 2 worker processes each (Celeriac and Celery prefork "
        "-c 2, Huey -k process -w 2 -q). Enqueue: `delay()` one call at a time from one client.",
        quick_args=QUICK,
    ),
    Bench(
        "amqp",
        "RabbitMQ",
        "amqp_vs_peers.py",
        [
            Row("celeriac", "Celeriac", "celeriac -c 2 redis"),
            Row(
                "celeriac_noconfirm",
                "Celeriac confirm_publish=False",
                "celeriac -c 2 redis nc",
            ),
            Row("dramatiq", "Dramatiq", "dramatiq -p2 -t8", needs="dramatiq"),
            Row("celery", "Celery", "celery -c 2 rpc", needs="celery"),
        ],
        [
            Target("drain_per_s", ">=", 2, peer="dramatiq"),
            Target("enqueue_per_s", ">=", 1, row="celeriac_noconfirm", peer="dramatiq"),
            RSS,
        ],
        "Celeriac and Dramatiq (its CLI defaults: 2 processes x 8 threads) keep results in "
        "Redis, Celery in `rpc://`. Enqueue/s is each system's default: Celeriac's `delay()` "
        "waits for the publisher confirm, one call at a time; Dramatiq and Celery do not wait.",
        quick_args=["--n", "500", "--calls", "30"],
        extra=[("enqueue_confirmed_per_s", "enqueue/s with confirms")],
    ),
    Bench(
        "amqp_confirm",
        "RabbitMQ, confirmed publish",
        "amqp_publish.py",
        [
            Row("celeriac", "Celeriac delay()", "delay()"),
            Row("py_amqp", "py-amqp basic_publish", "py-amqp"),
            Row(
                "celery",
                "Celery delay(), confirm_publish",
                "celery delay(), confirms",
                needs="celery",
            ),
        ],
        [Target("enqueue_confirmed_per_s", ">=", 0.9, peer="py_amqp", what="within 10%")],
        "One call at a time, each waiting for its publisher confirm, to one durable queue: "
        "Celeriac's `delay()`, the raw client (py-amqp, Celery's library, no kombu) publishing "
        "the same message, and Celery's `delay()` with `confirm_publish`; each row a fresh "
        "process, rows interleaved.",
        quick_args=["--n", "300"],
        systems_flag="--rows",
        only=["enqueue_confirmed_per_s", "wall_us", "cpu_us"],
        chart=False,
    ),
    Bench(
        "sqlite",
        "SQLite",
        "sqlite_vs_huey.py",
        [
            Row("celeriac", "Celeriac", "celeriac"),
            Row("huey", "Huey", "huey", needs="huey"),
        ],
        [
            Target("drain_per_s", ">=", 3, peer="huey"),
            Target("rt_p50_ms", "<=", 2),
            RSS,
        ],
        "Broker and results in one SQLite file; Celeriac prefork -c 2, Huey -k process -w 2.",
        quick_args=QUICK,
        by_systems=False,
    ),
]


# -- pure: JSON -> medians -> rows, verdicts, markdown, chart --------------------------------


def medians(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each system's median of every metric over its runs (the ``runs`` every bench writes)."""
    out: dict[str, dict[str, float]] = {}
    for system, runs in data.get("runs", {}).items():
        keys = {k for run in runs for k in run}
        out[system] = {
            k: statistics.median(float(run[k]) for run in runs if k in run) for k in sorted(keys)
        }
    return out


def value(m: dict[str, dict[str, float]], row: Row, metric: str) -> float | None:
    """A measured median, or None (system absent, metric absent, NaN)."""
    got = m.get(row.system, {}).get(metric)
    return got if got is not None and math.isfinite(got) else None


def fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def columns(bench: Bench, m: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    """The table's metric columns: the batch one only where measured or targeted."""
    if bench.only:
        return [(k, METRIC_LABELS[k]) for k in bench.only]
    keys = list(COLUMNS)
    keys[1:1] = [k for k, _ in bench.extra]
    batch_wanted = any(t.metric == BATCH for t in bench.targets)
    if not batch_wanted and not any(BATCH in v for v in m.values()):
        keys.remove(BATCH)
    return [(k, METRIC_LABELS[k]) for k in keys]


def table_rows(bench: Bench, m: dict[str, dict[str, float]]) -> list[list[str]]:
    """One line per row: its label, then each column's median ("not measured" if absent)."""
    lines = []
    for row in bench.rows:
        if row.system not in m:
            lines.append([row.label] + [NOT_MEASURED] * len(columns(bench, m)))
            continue
        cells = []
        for key, _ in columns(bench, m):
            v = value(m, row, key)
            cells.append(fmt(v) if v is not None else "—")
        lines.append([row.label, *cells])
    return lines


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    verdict: str  # "met", "not met" or "not measured"


def evaluate(bench: Bench, target: Target, m: dict[str, dict[str, float]]) -> Verdict:
    rows = {r.role: r for r in bench.rows}
    text = target.describe(rows)
    mine = value(m, rows[target.row], target.metric)
    theirs = value(m, rows[target.peer], target.metric) if target.peer else 1.0
    if mine is None or theirs is None or theirs == 0:
        return Verdict(text, NOT_MEASURED, NOT_MEASURED)
    got = mine / theirs
    ok = got >= target.bound if target.op == ">=" else got <= target.bound
    if target.peer:
        unit = METRIC_UNITS[target.metric]
        measured = f"{got:.2f}x ({fmt(mine)}{unit} vs {fmt(theirs)}{unit})"
    else:
        measured = fmt(mine) + METRIC_UNITS[target.metric]
    return Verdict(text, measured, "met" if ok else "not met")


def chart_panel(bench: Bench, m: dict[str, dict[str, float]]) -> Panel:
    """Drain and enqueue bars per row; each peer's group labelled with Celeriac's ratios."""
    mine = next(r for r in bench.rows if r.role == "celeriac")
    groups = []
    for row in bench.rows:
        vals = {k: value(m, row, k) for k in ("drain_per_s", "enqueue_per_s")}
        note = NOT_MEASURED if row.system not in m else ""
        if not note and not row.role.startswith("celeriac"):
            parts = []
            for key, name in (("drain_per_s", "drain"), ("enqueue_per_s", "enqueue")):
                a, b = value(m, mine, key), vals[key]
                if a is not None and b:
                    parts.append(f"{name} {a / b:.2f}x")
            note = (f"Celeriac / {row.label}:\n" + ", ".join(parts)) if parts else ""
        groups.append(Group(row.label, vals, note))
    return Panel(bench.broker, groups)


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    out = ["# Performance: Celeriac against its peers, per broker", ""]
    if meta["quick"]:
        out += [
            "**SMOKE RUN (`--quick`): small N, "
            f"{meta['repeat']} repeat(s); these numbers are not results.** "
            "Regenerate with `.venv/bin/python bench/report.py` (medians of 3).",
            "",
        ]
    out += [
        f"Written by `bench/report.py` on {meta['finished']}; do not edit by hand. "
        "Every number is a median over the runs of one invocation (the benches ran one after "
        "another, systems interleaved within each), task events off. Targets are issue 19's; "
        "met / not met is computed from the medians.",
        "",
        f"Machine: {meta['cpus']} CPUs, load average {meta['load_before']} before, "
        f"{meta['load_after']} after; {meta['versions']}; commit {meta['commit']}.",
        "",
        "![drain and enqueue per system](performance.svg)",
        "",
        "Under each peer in the chart: Celeriac's rate divided by the peer's (above 1: Celeriac "
        "is faster). In the tables, *not measured*: the system did not run (its package is not "
        "installed, or the bench failed); —: the bench does not measure this for that system.",
        "",
    ]
    for bench in BENCHES:
        entry = report["benches"].get(bench.key)
        m = medians(entry["data"]) if entry and entry.get("data") else {}
        out += [f"## {bench.broker}", "", bench.note, ""]
        if entry is None:
            out += ["Not run in this invocation.", ""]
        else:
            out += [f"`{shlex.join(entry['argv'])}` ({entry['seconds']:.0f} s)."]
            if entry.get("error"):
                out += ["", f"The bench failed: `{entry['error']}`"]
            out.append("")
        cols = columns(bench, m)
        out.append("| system | " + " | ".join(label for _, label in cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        out += ["| " + " | ".join(line) + " |" for line in table_rows(bench, m)]
        out += ["", "| target (issue 19) | measured | |", "|---|---:|---|"]
        for target in bench.targets:
            v = evaluate(bench, target, m)
            out.append(f"| {v.target} | {v.measured} | {v.verdict} |")
        out.append("")
    return "\n".join(out)


def render_chart(report: dict[str, Any]) -> str:
    panels = []
    for bench in (b for b in BENCHES if b.chart):
        entry = report["benches"].get(bench.key)
        panels.append(chart_panel(bench, medians(entry["data"]) if entry and entry["data"] else {}))
    kind = "SMOKE RUN, not results" if report["meta"]["quick"] else "medians of runs"
    return render(panels, f"Celeriac vs peers, {report['meta']['finished']} ({kind})")


# -- running the benches --------------------------------------------------------------------


def installed(package: str) -> bool:
    return not package or importlib.util.find_spec(package) is not None


def command(bench: Bench, quick: bool, repeat: int, json_path: Path) -> list[str]:
    argv = [sys.executable, bench.script, *(bench.quick_args if quick else bench.full_args)]
    argv += ["--repeat", str(repeat), "--json", str(json_path)]
    if bench.by_systems:  # only the rows shown, and only those whose package is installed
        argv += [bench.systems_flag, *(r.system for r in bench.rows if installed(r.needs))]
    return argv


def run_bench(bench: Bench, quick: bool, repeat: int, work: Path) -> dict[str, Any]:
    json_path, log = work / f"{bench.key}.json", work / f"{bench.key}.log"
    argv = command(bench, quick, repeat, json_path)
    started = time.perf_counter()
    entry: dict[str, Any] = {"argv": ["python", *argv[1:]], "data": None, "error": None}
    entry["load_before"] = load()
    print(f"{bench.broker}: {shlex.join(entry['argv'])}  (log: {log})", flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=HERE, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        finally:  # Ctrl-C or SIGTERM: let the bench stop its workers
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    entry["seconds"] = time.perf_counter() - started
    entry["load_after"] = load()
    if code != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        entry["error"] = f"exit status {code}: {tail[0][:300]}"
    if json_path.exists():
        entry["data"] = json.loads(json_path.read_text())
    print(f"  {entry['seconds']:.0f} s" + (f", {entry['error']}" if entry["error"] else ""))
    return entry


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "src")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (src/ has uncommitted changes)" if dirty else "")


def versions() -> str:
    found = [f"Python {platform.python_version()}", f"SQLite {sqlite3.sqlite_version}"]
    for name in ("celeriac", "huey", "celery", "kombu", "dramatiq", "redis", "amqp", "pika"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    with contextlib.suppress(Exception):
        import redis

        found.append("Redis server " + str(redis.Redis().info("server")["redis_version"]))
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["rabbitmqctl", "-q", "version"], capture_output=True, text=True, timeout=60
        )
        found.append("RabbitMQ " + out.stdout.strip())
    return ", ".join(found)


def write_docs(report: dict[str, Any], docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "performance.md").write_text(render_markdown(report))
    (docs / "performance.svg").write_text(render_chart(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small N, 1 repeat")
    parser.add_argument("--repeat", type=int, help="runs per system (3; --quick: 1)")
    parser.add_argument("--brokers", nargs="*", choices=[b.key for b in BENCHES])
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where to write")
    parser.add_argument("--work", type=Path, help="each bench's JSON and log (default: a tmp dir)")
    parser.add_argument("--from-json", type=Path, help="re-render a saved performance.json")
    args = parser.parse_args()
    if args.from_json:
        write_docs(json.loads(args.from_json.read_text()), args.docs)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    repeat = args.repeat or (1 if args.quick else 3)
    work = args.work or Path(tempfile.mkdtemp(prefix="celeriac-report-"))
    work.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"quick": args.quick, "repeat": repeat, "cpus": os.cpu_count()}
    meta |= {"load_before": load(), "commit": commit(), "versions": versions()}
    benches = {
        b.key: run_bench(b, args.quick, repeat, work)
        for b in BENCHES
        if not args.brokers or b.key in args.brokers
    }
    meta["load_after"] = load()
    if (now := commit()) != meta["commit"]:
        meta["commit"] += f" -> {now} (changed during the run)"
    meta["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = {"meta": meta, "benches": benches}
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "performance.json").write_text(json.dumps(report, indent=1) + "\n")
    write_docs(report, args.docs)
    print(f"wrote {args.docs}/performance.md, .svg, .json")


if __name__ == "__main__":
    main()
