"""Our prefork supervisor against billiard and pebble: job throughput, per-task kill, memory.

    .venv/bin/python bench/pool_libraries.py [--n 20000] [--trials 3] [--repeat 2]
        [--json out.json]

Needs ``pip install billiard pebble`` (bench-only; not dependencies of Celeriac).

Every measurement runs in a fresh interpreter (``pool_libraries.py one ...``) that imports
celeriac and both libraries, so every pool forks children from the same kind of parent. Pools,
all with 2 processes, started by ``fork``:

* **celeriac**: ``celeriac.worker.pools.prefork.PreforkPool`` driven directly, as the consumer
  does: a ``memory://`` app, ``Job`` objects built from ``prepare_message`` + ``precheck``
  (consumer.py ``_dispatch``), ``submit()`` one by one, outcomes counted in ``on_outcome``.
  ``celeriac pipeline=1`` is the same with ``worker_prefork_pipeline=1`` (no job queued in a busy
  child's pipe).
* **billiard** (4.x, Celery's fork of multiprocessing.Pool):
  ``Pool(2, enable_timeouts=True).apply_async(f, callback=)``; kill with
  ``pool.terminate_job(pid, SIGKILL)`` (what Celery's ``revoke(terminate=True)`` does) or
  ``apply_async(..., timeout=)`` (only enforced with ``enable_timeouts`` or a pool-wide timeout).
* **pebble** (5.x): ``ProcessPool(2).schedule(f, timeout=)`` and a done-callback on the future;
  kill with ``future.cancel()`` or the timeout.

Measures:

1. **throughput**: N jobs submitted one by one as fast as the caller can, after a warm-up of
   200; jobs/s = N / (first submit -> last outcome). ``bare`` = a no-op function (the library's
   own cost); ``celeriac job`` = the function runs our executor on the job's wire tuple exactly as
   a prefork child does (``execute(app, Job.from_wire(...))``) and the caller rebuilds the
   ``Outcome``: what the library would cost if it replaced our supervisor.
2. **memory per child**: VmRSS, RssAnon, Pss and USS (private pages) of each child after the
   throughput run, and the parent's RSS.
3. **kill**: a fresh pool, settled for 2 s; jobs A and B sleep 60 s, C (no-op) is queued behind
   them. Either A is killed 0.5 s after it was submitted (``terminate``), or A has a 0.5 s time
   limit (``time limit``). From the kill (resp. from submit + 0.5 s): **reported s** until A's
   outcome reaches the caller, **replaced s** until a new child process exists, **next job s**
   until C has run. C can only run in A's replacement (B sleeps on), unless the pool queued it
   behind B, in which case it is **stuck** (given up after 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import billiard
import billiard.pool
import pebble

import celeriac
from celeriac import Celeriac
from celeriac.brokers.base import Delivery
from celeriac.worker.executor import execute, precheck
from celeriac.worker.limits import alarm_soft_limit

try:
    from celeriac.worker.job import Job, Outcome
except ImportError:  # before Job/Outcome had their own module (f6a045f)
    from celeriac.worker.executor import Job, Outcome  # type: ignore[no-redef]

APP = Celeriac("b", broker_url="memory://")


@APP.task(name="bench.noop")
def noop_task(i: int) -> int:
    return i


@APP.task(name="bench.sleep")
def sleep_task(seconds: float) -> None:
    time.sleep(seconds)


def bare_noop(i: int) -> int:
    return i


def bare_sleep(seconds: float) -> None:
    time.sleep(seconds)


def run_wire(wire: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a prefork child does with a job (prefork.py ``_child_main``), minus the pipe."""
    return execute(APP, Job.from_wire(APP, wire), alarm_soft_limit).to_wire()


_ids = iter(range(1, 1 << 62))


def make_job(name: str, args: list[Any], **options: Any) -> Job:
    """A Job as the consumer builds one from a fetched message (consumer.py ``_dispatch``)."""
    publication = APP.prepare_message(name, args, None, **options)
    message, queue = publication.message, publication.route.name
    job_id = next(_ids)
    delivery = Delivery(message, queue, tag=job_id)
    headers, outcome = precheck(APP, job_id, delivery, None)
    assert headers is not None and outcome is None
    return Job(job_id, message, headers, queue, delivery.delivery_count, "bench@pool")


# -- /proc -------------------------------------------------------------------------------------
def children(pid: int | None = None) -> set[int]:
    pid = pid or os.getpid()
    out: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out.update(map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split()))
    return out


def memory(pid: int) -> dict[str, float]:
    kb: dict[str, int] = {}
    for name in ("status", "smaps_rollup"):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                kb[key] = kb.get(key, 0) + int(rest.split()[0])
    return {
        "rss_mb": kb["VmRSS"] / 1024,
        "anon_mb": kb["RssAnon"] / 1024,
        "pss_mb": kb["Pss"] / 1024,
        "uss_mb": (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024,
    }


# -- the pools, behind one small interface -----------------------------------------------------
class Counter:
    """Counts outcomes from any thread; ``wait(n)`` blocks until n arrived."""

    def __init__(self) -> None:
        self.n = 0
        self.ok = 0
        self.cond = threading.Condition()

    def add(self, ok: bool) -> None:
        with self.cond:
            self.n += 1
            self.ok += ok
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 600) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.n >= n, timeout):
                raise RuntimeError(f"only {self.n}/{n} outcomes after {timeout}s")


class Runner:
    """submit(kind, arg, done, limit) -> handle; kill(handle); child_pids(); close()."""

    name = ""

    def child_pids(self) -> list[int]:
        return sorted(children())

    def prepare(self, kind: str, arg: Any, limit: float | None = None) -> Any:
        return arg


class Ours(Runner):
    def __init__(self, pipeline: int = 2) -> None:
        from celeriac.worker.pools.prefork import PreforkPool

        self.name = "celeriac" if pipeline == 2 else f"celeriac pipeline={pipeline}"
        APP.conf.worker_prefork_pipeline = pipeline
        self.callbacks: dict[int, Any] = {}
        self.lock = threading.Lock()
        self.pool = PreforkPool(APP, 2, self._on_outcome)
        self.pool.start()

    def _on_outcome(self, outcome: Outcome) -> None:
        with self.lock:
            done = self.callbacks.pop(outcome.job_id, None)
        if done is not None:
            done(outcome.state == "SUCCESS", outcome)

    def prepare(self, kind: str, arg: Any, limit: float | None = None) -> Job:
        name = "bench.sleep" if kind == "sleep" else "bench.noop"
        return make_job(name, [arg], time_limit=limit)

    def submit(self, job: Job, done: Any) -> Job:
        with self.lock:
            self.callbacks[job.job_id] = done
        self.pool.submit(job)
        return job

    def kill(self, job: Job) -> None:
        self.pool.terminate(job.headers.id)  # what revoke(terminate=True) calls

    def child_pids(self) -> list[int]:
        return sorted(self.pool.child_pids())

    def close(self) -> None:
        self.pool.stop(cold=True)


class Billiard(Runner):
    name = "billiard"

    def __init__(self, wire: bool = False) -> None:
        # enable_timeouts: without it (or a pool-wide timeout) billiard starts no timeout
        # handler, and a per-task apply_async(timeout=) is silently never enforced.
        self.pool = billiard.pool.Pool(2, enable_timeouts=True)
        self.wire = wire
        self.limit: float | None = None

    def prepare(self, kind: str, arg: Any, limit: float | None = None) -> Any:
        if self.wire:
            return make_job("bench.noop", [arg]).to_wire()
        return (kind, arg, limit)

    def submit(self, item: Any, done: Any) -> Any:
        if self.wire:
            return self.pool.apply_async(
                run_wire,
                (item,),
                callback=lambda w: done(Outcome.from_wire(w).state == "SUCCESS", w),
                error_callback=lambda e: done(False, e),
            )
        kind, arg, limit = item
        return self.pool.apply_async(
            bare_sleep if kind == "sleep" else bare_noop,
            (arg,),
            callback=lambda r: done(True, r),
            error_callback=lambda e: done(False, e),
            timeout=limit,
        )

    def kill(self, result: Any) -> None:
        # Celery: revoke(terminate=True) -> request.terminate -> pool.terminate_job(pid, sig)
        deadline = time.monotonic() + 5
        while not result._worker_pid and time.monotonic() < deadline:
            time.sleep(0.001)
        self.pool.terminate_job(result._worker_pid, signal.SIGKILL)

    def child_pids(self) -> list[int]:
        return sorted(p.pid for p in self.pool._pool if p.pid)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class Pebble(Runner):
    name = "pebble"

    def __init__(self, wire: bool = False) -> None:
        self.pool = pebble.ProcessPool(max_workers=2)
        self.wire = wire

    def prepare(self, kind: str, arg: Any, limit: float | None = None) -> Any:
        if self.wire:
            return make_job("bench.noop", [arg]).to_wire()
        return (kind, arg, limit)

    def submit(self, item: Any, done: Any) -> Any:
        if self.wire:
            future = self.pool.schedule(run_wire, (item,))
        else:
            kind, arg, limit = item
            future = self.pool.schedule(
                bare_sleep if kind == "sleep" else bare_noop, (arg,), timeout=limit
            )

        def callback(f: Any) -> None:
            if f.cancelled():
                done(False, "cancelled")
            elif f.exception() is not None:
                done(False, f.exception())
            elif self.wire:
                done(Outcome.from_wire(f.result()).state == "SUCCESS", None)
            else:
                done(True, f.result())

        future.add_done_callback(callback)
        return future

    def kill(self, future: Any) -> None:
        future.cancel()  # a running future: pebble terminates its worker process

    def close(self) -> None:
        self.pool.stop()
        self.pool.join()


def make_runner(name: str, wire: bool = False) -> Runner:
    if name == "celeriac":
        return Ours()
    if name == "celeriac pipeline=1":
        return Ours(pipeline=1)
    return Billiard(wire) if name == "billiard" else Pebble(wire)


# -- measurements (each in its own interpreter) ------------------------------------------------
def throughput(pool: str, kind: str, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    runner = make_runner(pool, wire=kind == "celeriac job")
    counter = Counter()

    def done(ok: bool, _: Any) -> None:
        counter.add(ok)

    try:
        warm = [runner.prepare("noop", i) for i in range(200)]
        for item in warm:
            runner.submit(item, done)
        counter.wait(200)
        startup_s = time.perf_counter() - t0
        items = [runner.prepare("noop", i) for i in range(n)]  # built before the clock
        start = time.perf_counter()
        for item in items:
            runner.submit(item, done)
        submitted = time.perf_counter()
        counter.wait(200 + n)
        end = time.perf_counter()
        pids = runner.child_pids()
        mem = [memory(pid) for pid in pids]
        parent = memory(os.getpid())
        ok = counter.ok
    finally:
        runner.close()
    if ok != 200 + n:
        raise RuntimeError(f"{pool} {kind}: {200 + n - ok} jobs did not succeed")
    return {
        "jobs_per_s": n / (end - start),
        "submit_s": submitted - start,
        "startup_s": startup_s,
        "children": len(pids),
        "child_rss_mb": statistics.mean(m["rss_mb"] for m in mem),
        "child_anon_mb": statistics.mean(m["anon_mb"] for m in mem),
        "child_pss_mb": statistics.mean(m["pss_mb"] for m in mem),
        "child_uss_mb": statistics.mean(m["uss_mb"] for m in mem),
        "parent_rss_mb": parent["rss_mb"],
    }


def kill_trial(pool: str, how: str) -> dict[str, Any]:
    runner = make_runner(pool)
    events: dict[str, float] = {}
    lock = threading.Lock()

    def mark(name: str) -> Any:
        def done(ok: bool, _: Any) -> None:
            with lock:
                events.setdefault(name, time.monotonic())
                events.setdefault(f"{name}_ok", ok)

        return done

    try:
        warm = Counter()
        for i in range(4):
            runner.submit(runner.prepare("noop", i), lambda ok, _: warm.add(ok))
        warm.wait(4)
        time.sleep(2.0)  # past billiard's start-up burst: its supervisor then runs every 0.8 s
        before = set(runner.child_pids())
        limit = 0.5 if how == "time limit" else None
        a_item = runner.prepare("sleep", 60.0, limit)
        b_item = runner.prepare("sleep", 60.0)
        c_item = runner.prepare("noop", 1)
        t_submit = time.monotonic()
        a = runner.submit(a_item, mark("a"))
        runner.submit(b_item, mark("b"))
        runner.submit(c_item, mark("c"))
        t_kill = t_submit + 0.5
        if how == "terminate":
            time.sleep(max(0.0, t_kill - time.monotonic()))
            t_kill = time.monotonic()
            runner.kill(a)
        replaced = None
        deadline = t_kill + 5.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if replaced is None and set(children()) - before:
                replaced = now
            with lock:
                if "c" in events and "a" in events and replaced is not None:
                    break
            time.sleep(0.002)
        with lock:
            got = dict(events)
    finally:
        runner.close()

    def rel(t: float | None) -> float | None:
        return None if t is None else t - t_kill

    return {
        "reported_s": rel(got.get("a")),
        "replaced_s": rel(replaced),
        "next_job_s": rel(got.get("c")),
        "stuck": "c" not in got,
        "a_failed": got.get("a_ok") is False,
    }


def one(argv: list[str]) -> None:
    measure = argv[0]
    if measure == "throughput":
        out: Any = throughput(argv[1], argv[2], int(argv[3]))
    else:
        out = [kill_trial(argv[1], argv[2]) for _ in range(int(argv[3]))]
    print(json.dumps(out))


# -- the driver --------------------------------------------------------------------------------
POOLS = ["celeriac", "celeriac pipeline=1", "billiard", "pebble"]
THROUGHPUT = [
    ("celeriac", "celeriac job"),
    ("celeriac pipeline=1", "celeriac job"),
    ("billiard", "celeriac job"),
    ("pebble", "celeriac job"),
    ("billiard", "bare"),
    ("pebble", "bare"),
]
KILLS = ["terminate", "time limit"]


def sub(args: list[str], timeout: float = 900) -> Any:
    proc = subprocess.Popen(
        [sys.executable, __file__, "one", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its pool children are in its group: killed with it
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        # The whole group, always: also pool children a failed run left behind in a sleep.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{err[-3000:]}")
    return json.loads(out)


def fmt(value: Any, spec: str = "{:.2f}") -> str:
    if value is None:
        return "-"
    return spec.format(value)


def main() -> None:
    if sys.argv[1:2] == ["one"]:
        one(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="jobs per throughput run")
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs per pool (median)")
    parser.add_argument("--trials", type=int, default=3, help="kill trials per pool and way")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--json", type=Path, help="also write all runs here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    runs: dict[str, list[dict[str, Any]]] = {f"{p} / {k}": [] for p, k in THROUGHPUT}
    for i in range(args.repeat):
        for pool, kind in THROUGHPUT:  # interleaved, so drift on the machine hits all alike
            result = sub(["throughput", pool, kind, str(args.n)])
            runs[f"{pool} / {kind}"].append(result)
            print(f"run {i + 1} {pool} / {kind}: {json.dumps(result)}", flush=True)
    kills: dict[str, list[dict[str, Any]]] = {}
    if not args.skip_kill:
        for how in KILLS:
            for pool in POOLS:
                trials = sub(["kill", pool, how, str(args.trials)])
                kills[f"{pool} / {how}"] = trials
                print(f"kill {pool} / {how}: {json.dumps(trials)}", flush=True)

    print(
        f"\nthroughput: {args.n} jobs submitted one by one, 2 processes, median of "
        f"{args.repeat} run(s), {os.cpu_count()} CPUs; billiard {billiard.__version__}, "
        f"pebble {pebble.__version__}; celeriac from {Path(celeriac.__file__).parent}"
    )
    cols = ["jobs/s", "submit s", "child RSS", "child anon", "child PSS", "child USS", "parent"]
    print(f"{'pool / job':<36}" + "".join(f"{c:>11}" for c in cols))
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        cells = [
            f"{med['jobs_per_s']:,.0f}",
            f"{med['submit_s']:.2f}",
            *(f"{med[k]:.1f}" for k in ("child_rss_mb", "child_anon_mb", "child_pss_mb")),
            f"{med['child_uss_mb']:.1f}",
            f"{med['parent_rss_mb']:.1f}",
        ]
        print(f"{name:<36}" + "".join(f"{c:>11}" for c in cells))
    print("(memory in MB, per child after the run; parent = the submitting process's RSS)")
    if kills:
        print(
            f"\nkill: A (sleep 60) killed 0.5 s after submit, B sleeps, C queued; "
            f"{args.trials} trial(s) each, seconds after the kill; median [max]"
        )
        cols = ["reported", "replaced", "next job", "stuck"]
        print(f"{'pool / how':<36}" + "".join(f"{c:>15}" for c in cols))
        for name, trials in kills.items():
            cells = []
            for key in ("reported_s", "replaced_s", "next_job_s"):
                vals = [t[key] for t in trials if t[key] is not None]
                missing = len(trials) - len(vals)
                cell = (f"{statistics.median(vals):.3f} [{max(vals):.3f}]" if vals else "never") + (
                    "*" if missing else ""
                )
                cells.append(cell)
            cells.append(f"{sum(t['stuck'] for t in trials)}/{len(trials)}")
            print(f"{name:<36}" + "".join(f"{c:>15}" for c in cells))
        print("(* some trials never saw it within 5 s; stuck = C not run within 5 s of the kill)")
    if args.json:
        args.json.write_text(json.dumps({"throughput": runs, "kill": kills}, indent=2))


if __name__ == "__main__":
    main()
