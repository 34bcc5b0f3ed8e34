"""10,000 concurrent ``async def`` tasks (each ``await asyncio.sleep(0.1)``) on ONE asyncio worker.

    .venv/bin/python bench/asyncio_10k.py [--n 10000] [--prefetch-multiplier 1]
        [--brokers sqlite redis] [--modes live preloaded] [--repeat 1] [--py-spy DIR]
        [--json out.json]

Target (issue 3): under 5 s from the first send to the last result, worker RSS under 200 MB.

One worker ``python -m celeriac -A asyncio_10k:app worker -P asyncio -c 10000
--prefetch-multiplier M`` (it leases c x M messages, so M = 1 already lets all 10,000 run at
once). One fresh client process sends the N tasks with ``apply_async(task_id=...)`` (= ``delay``,
with ids known up front) in a loop, stamping ``time.monotonic()`` (system-wide, so comparable
across processes) before its first and after its last send. The bench counts results in the result
store every 20 ms and samples the worker tree's VmRSS / RssAnon from /proc every 50 ms (the
kernel's own peak, VmHWM, is read too). Two modes:

* **live**: the worker is up (its "ready" log line) before the client starts. enqueue s = first
  -> last send; drain s = last send -> last result (how far the worker lags behind the
  producer); end to end = first send -> last result. The worker keeps pace with the sender, so
  only a few hundred tasks are in flight at once.
* **preloaded**: all N are queued first, then the worker starts, so all N are in flight at once.
  start-up s = Popen -> first result; drain s = first -> last result; end to end = enqueue s +
  (Popen -> last result).

With ``--py-spy DIR`` the worker runs under ``py-spy record --threads`` (raw collapsed stacks in
DIR) and the hottest functions (own samples and inclusive) per thread are printed: that is how to
find where the time goes. py-spy slows the worker, so a profiled run's timings are not results.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import celeriac
from celeriac import Celeriac

# -- the task module (the worker imports this file: keep it light) -----------------------------
app = Celeriac("bench_asyncio_10k")


@app.task(name="bench.nap")
async def nap(seconds: float) -> None:
    await asyncio.sleep(seconds)


# -- the bench ---------------------------------------------------------------------------------
HERE = Path(__file__).resolve().parent
PY = sys.executable
PY_SPY = Path(PY).with_name("py-spy")
TARGET_S, TARGET_MB = 5.0, 200.0


def task_ids(tag: str, n: int) -> list[str]:
    """Ids chosen up front, so the bench can count results while the client is still sending."""
    return [f"{tag}-{i}" for i in range(n)]


def client_main(n: int, seconds: float, tag: str) -> None:
    """The client process: send N tasks, print monotonic stamps around the send loop."""
    ids = task_ids(tag, n)
    start = time.monotonic()
    for task_id in ids:
        nap.apply_async((seconds,), task_id=task_id)  # = delay(seconds), with a known id
    end = time.monotonic()
    print(json.dumps({"start": start, "end": end}))


def proc_tree(root: int) -> list[int]:
    """The worker and its descendants (prefork children, if any), from /proc/*/task/*/children."""
    tree, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                tree.append(kid)
                frontier.append(kid)
    return tree


def memory(root: int) -> dict[str, float]:
    kb = {"VmRSS:": 0, "RssAnon:": 0, "VmHWM:": 0}
    for pid in proc_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for fields in map(str.split, status.splitlines()):
            if fields and fields[0] in kb:
                kb[fields[0]] += int(fields[1])
    return {
        "rss_mb": kb["VmRSS:"] / 1024,
        "anon_mb": kb["RssAnon:"] / 1024,
        "hwm_mb": kb["VmHWM:"] / 1024,
    }


def cpu_seconds(root: int) -> float:
    """utime + stime of the worker tree so far (start-up included)."""
    ticks = 0
    for pid in proc_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Samples the worker tree's memory every 50 ms; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = {"rss_mb": 0.0, "anon_mb": 0.0, "hwm_mb": 0.0}
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            mem = memory(self.pid)
            self.samples += 1
            for k, v in mem.items():
                self.peak[k] = max(self.peak[k], v)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        return self.peak


def wait_ready(log_path: Path, worker: subprocess.Popen, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if " ready: " in log_path.read_text():
            return time.monotonic() - start
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}")
        time.sleep(0.02)
    raise RuntimeError("worker not ready in time")


def hot_functions(raw: Path, top: int = 12) -> str:
    """Summarise py-spy's raw output: per thread, own and inclusive samples per function."""
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    names: dict[str, str] = {}
    if not raw.exists():
        return f"  (py-spy wrote no {raw})"
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        # "thread (TID): name" (the name is missing from some samples): group by TID
        thread, _, name = frames[0].partition(": ")
        if name:
            names[thread] = name
        totals[thread] += int(count)
        funcs = []
        for frame in frames[1:]:  # "name (file.py:line)" -> "file.py:name"
            func, _, where = frame.partition(" (")
            funcs.append(f"{where.rstrip(')').rsplit(':', 1)[0]}:{func}")
        if funcs:
            own[thread][funcs[-1]] += int(count)
            for func in set(funcs):
                incl[thread][func] += int(count)
    out = []
    for thread, total in totals.most_common():
        out.append(f"  {thread} {names.get(thread, '')}: {total} samples")
        out.append(
            "    own:       "
            + "; ".join(f"{n} {100 * c / total:.0f}%" for n, c in own[thread].most_common(top // 2))
        )
        # Frames in every sample of the thread (its run loop) say nothing: left out.
        hot = [(n, c) for n, c in incl[thread].most_common() if c < total][:top]
        out.append("    inclusive: " + "; ".join(f"{n} {100 * c / total:.0f}%" for n, c in hot))
    return "\n".join(out)


class Worker:
    """The worker process, optionally started under ``py-spy record`` (then its child)."""

    def __init__(self, cmd: list[str], env: dict[str, str], tmp: Path, raw: Path | None) -> None:
        self.log_path = tmp / "worker.log"
        self.raw = raw
        with open(self.log_path, "w") as log:
            if raw is None:
                argv = cmd
            else:
                argv = [str(PY_SPY), "record", "--threads", "--format", "raw", "--rate", "200",
                        "--output", str(raw), "--", *cmd]  # fmt: skip
            # Own session: the worker (and py-spy) form one group we can kill as a whole.
            self.popen = subprocess.Popen(
                argv, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid = self.popen.pid
        if raw is not None:  # the worker is py-spy's child
            deadline = time.monotonic() + 10
            while self.pid == self.popen.pid:
                kids = proc_tree(self.popen.pid)[1:]
                if kids:
                    self.pid = kids[0]
                elif time.monotonic() > deadline or self.popen.poll() is not None:
                    raise RuntimeError("py-spy did not start the worker")
                else:
                    time.sleep(0.005)

    def ready(self) -> bool:
        return " ready: " in self.log_path.read_text()

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"worker exited with {self.popen.returncode}")

    def stop(self) -> None:
        """TERM the worker (py-spy then writes its file and exits), then KILL the group."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


def run_once(broker: str, mode: str, args: argparse.Namespace, run: int) -> dict[str, float]:
    from pools import RedisStore, SqliteStore, Store, pythonpath

    nan = float("nan")
    with tempfile.TemporaryDirectory(prefix="bench-asyncio-10k-") as tmp_name:
        tmp = Path(tmp_name)
        store: Store = SqliteStore(tmp) if broker == "sqlite" else RedisStore(args.redis)
        env = {**os.environ, "PYTHONPATH": pythonpath(), **store.env()}
        cmd = [
            PY, "-m", "celeriac", "-A", "asyncio_10k:app", "worker", "-l", "warning",
            "-P", "asyncio", "-c", str(args.concurrency),
            "--prefetch-multiplier", str(args.prefetch_multiplier),
        ]  # fmt: skip
        raw = None
        if args.py_spy:
            args.py_spy.mkdir(parents=True, exist_ok=True)
            raw = (args.py_spy / f"{broker}-{mode}-run{run}.txt").resolve()
        tag = f"nap{run}-{os.getpid()}-{time.time_ns()}"
        ids = task_ids(tag, args.n)
        client_argv = [PY, str(HERE / "asyncio_10k.py"), "client", str(args.n), str(args.sleep)]
        client_out = tmp / "client.json"
        worker: Worker | None = None
        client: subprocess.Popen[bytes] | None = None
        try:
            if mode == "preloaded":  # every task queued before the worker starts
                with open(client_out, "w") as out:
                    subprocess.run([*client_argv, tag], env=env, stdout=out, check=True)
            t_worker = time.monotonic()
            worker = Worker(cmd, env, tmp, raw)
            sampler = Sampler(worker.pid)
            sampler.start()
            ready_at = None
            if mode == "live":
                while not worker.ready():
                    worker.check()
                    if time.monotonic() - t_worker > 60:
                        raise RuntimeError("worker not ready after 60 s")
                    time.sleep(0.01)
                ready_at = time.monotonic()
                with open(client_out, "w") as out:
                    client = subprocess.Popen(
                        [*client_argv, tag], env=env, stdout=out, start_new_session=True
                    )
            first = last = None
            deadline = time.monotonic() + 300
            while last is None:
                if client is not None and client.poll() not in (None, 0):
                    raise RuntimeError(f"client failed ({client.returncode})")
                now = time.monotonic()
                if ready_at is None and worker.ready():
                    ready_at = now
                done = store.count(ids)
                if done and first is None:
                    first = now
                if done >= args.n and (client is None or client.poll() == 0):
                    last = now
                    break
                worker.check()
                if now > deadline:
                    raise RuntimeError(f"only {done}/{args.n} done after 300 s")
                time.sleep(0.02)
            peak = sampler.stop()
            after = memory(worker.pid)
            cpu_s = cpu_seconds(worker.pid)
            sent = json.loads(client_out.read_text())
        except BaseException:
            if worker is not None:
                print(f"--- worker log tail ---\n{worker.log_path.read_text()[-3000:]}")
            raise
        finally:
            if client is not None and client.poll() is None:
                os.killpg(client.pid, signal.SIGKILL)
                client.wait()
            if worker is not None:
                worker.stop()
            store.close()
    assert first is not None and last is not None
    enqueue_s = sent["end"] - sent["start"]
    if mode == "live":
        timings = {
            "worker_startup_s": (ready_at or nan) - t_worker,
            "first_result_s": first - sent["start"],
            "drain_s": last - sent["end"],
            "end_to_end_s": last - sent["start"],
        }
    else:
        timings = {
            "worker_startup_s": first - t_worker,
            "first_result_s": nan,
            "drain_s": last - first,
            "end_to_end_s": enqueue_s + (last - t_worker),
        }
    result = {
        "enqueue_s": enqueue_s,
        "enqueue_per_s": args.n / enqueue_s,
        **timings,
        "worker_cpu_s": cpu_s,
        "worker_cpu_us_per_task": 1e6 * cpu_s / args.n,
        "rss_peak_mb": peak["rss_mb"],
        "anon_peak_mb": peak["anon_mb"],
        "vmhwm_mb": max(peak["hwm_mb"], after["hwm_mb"]),
        "rss_after_mb": after["rss_mb"],
    }
    if raw is not None:
        print(f"py-spy ({broker} {mode}, run {run}, {raw}):\n{hot_functions(raw)}", flush=True)
    return result


ROWS = [
    ("enqueue_s", "enqueue s (first -> last send)", "{:.2f}"),
    ("enqueue_per_s", "  = sends/s", "{:,.0f}"),
    ("worker_startup_s", "worker start-up s (see README)", "{:.2f}"),
    ("first_result_s", "first result s after 1st send (live)", "{:.2f}"),
    ("drain_s", "drain s (see README)", "{:.2f}"),
    ("end_to_end_s", "END TO END s (target < 5)", "{:.2f}"),
    ("worker_cpu_s", "worker CPU s (start-up included)", "{:.2f}"),
    ("worker_cpu_us_per_task", "  = CPU us per task", "{:.0f}"),
    ("rss_peak_mb", "worker RSS peak MB (target < 200)", "{:.1f}"),
    ("anon_peak_mb", "  RssAnon peak MB", "{:.1f}"),
    ("vmhwm_mb", "  VmHWM MB (kernel's peak)", "{:.1f}"),
    ("rss_after_mb", "worker RSS MB after the last result", "{:.1f}"),
]


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        client_main(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="tasks")
    parser.add_argument("--sleep", type=float, default=0.1, help="seconds each task sleeps")
    parser.add_argument("--concurrency", type=int, default=10000, help="worker -c")
    parser.add_argument("--prefetch-multiplier", type=int, default=1)
    parser.add_argument("--brokers", nargs="*", default=["sqlite", "redis"])
    parser.add_argument("--modes", nargs="*", default=["live", "preloaded"], help="see README")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--repeat", type=int, default=1, help="runs per broker (median)")
    parser.add_argument("--py-spy", type=Path, help="record the worker with py-spy into DIR")
    parser.add_argument("--json", type=Path, help="also write all runs and medians here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from pools import redis_reachable

    brokers = list(args.brokers)
    if "redis" in brokers and not redis_reachable(args.redis):
        print(f"no Redis at {args.redis}: SQLite only", flush=True)
        brokers.remove("redis")
    runs: dict[str, list[dict[str, float]]] = {f"{b} {m}": [] for b in brokers for m in args.modes}
    for i in range(args.repeat):
        for broker in brokers:
            for mode in args.modes:
                result = run_once(broker, mode, args, i + 1)
                runs[f"{broker} {mode}"].append(result)
                print(
                    f"run {i + 1} {broker} {mode}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in result.items()),
                    flush=True,
                )
    medians = {b: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for b, rs in runs.items()}
    print(
        f"\n{args.n} x asyncio.sleep({args.sleep}) on one worker -P asyncio -c {args.concurrency}"
        f" --prefetch-multiplier {args.prefetch_multiplier}, median of {args.repeat} run(s),"
        f" {os.cpu_count()} CPUs, celeriac from {Path(celeriac.__file__).parent}"
    )
    print(f"{'metric':<40}" + "".join(f"{b:>18}" for b in medians))
    for key, label, fmt in ROWS:
        cells = ("-" if math.isnan(m[key]) else fmt.format(m[key]) for m in medians.values())
        print(f"{label:<40}" + "".join(f"{c:>18}" for c in cells))
    verdict = {
        b: m["end_to_end_s"] < TARGET_S and m["rss_peak_mb"] < TARGET_MB for b, m in medians.items()
    }
    print(
        f"{'target met (< 5 s and < 200 MB)':<40}"
        + "".join(f"{'yes' if v else 'NO':>18}" for v in verdict.values())
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": medians}, indent=2))


if __name__ == "__main__":
    main()
