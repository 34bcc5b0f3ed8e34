"""bench/report.py's pure parts: bench JSON -> medians -> table rows, target verdicts, markdown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import report
from report import BATCH, BENCHES, NOT_MEASURED, Bench, Row, Target

REDIS, AMQP, AMQP_CONFIRM, SQLITE = BENCHES


def run(**metrics: float) -> dict[str, float]:
    base = {"enqueue_per_s": 0.0, "drain_per_s": 0.0, "rt_p50_ms": 0.0}
    base |= {"rt_p99_ms": 0.0, "rss_mb": 0.0}
    return base | metrics


def redis_data() -> dict[str, Any]:
    """Celeriac and Huey measured three times; Celery absent (as when it is not installed)."""
    return {
        "runs": {
            "celeriac prefork -c 2": [
                run(drain_per_s=7100, enqueue_per_s=9000, rt_p50_ms=0.5, rss_mb=58),
                run(drain_per_s=6900, enqueue_per_s=9600, rt_p50_ms=0.7, rss_mb=61),
                run(drain_per_s=8000, enqueue_per_s=9300, rt_p50_ms=0.55, rss_mb=59),
            ],
            "huey -k process -w 2": [
                run(drain_per_s=3000, enqueue_per_s=8000, rt_p50_ms=51, rss_mb=117),
                run(drain_per_s=3600, enqueue_per_s=7000, rt_p50_ms=52, rss_mb=118),
                run(drain_per_s=3500, enqueue_per_s=7500, rt_p50_ms=50, rss_mb=119),
            ],
        }
    }


def test_medians_are_per_metric_over_the_runs() -> None:
    m = report.medians(redis_data())
    assert m["celeriac prefork -c 2"]["drain_per_s"] == 7100
    assert m["celeriac prefork -c 2"]["enqueue_per_s"] == 9300
    assert m["celeriac prefork -c 2"]["rt_p50_ms"] == 0.55
    assert m["huey -k process -w 2"]["drain_per_s"] == 3500
    assert set(m) == {"celeriac prefork -c 2", "huey -k process -w 2"}


def test_a_metric_only_some_runs_have_is_the_median_of_those() -> None:
    data = {"runs": {"a": [{"x": 1.0}, {"x": 5.0, "y": 2.0}, {"x": 3.0, "y": 4.0}]}}
    assert report.medians(data) == {"a": {"x": 3.0, "y": 3.0}}


def test_table_rows_absent_rows_are_not_measured() -> None:
    rows = report.table_rows(REDIS, report.medians(redis_data()))
    labels = [label for _, label in report.columns(REDIS, report.medians(redis_data()))]
    assert labels == [
        "enqueue/s",
        "drain/s",
        "round trip p50 ms",
        "round trip p99 ms",
        "worker RSS MB",
    ]
    assert rows == [
        ["Celeriac", "9,300", "7,100", "0.55", "0", "59"],
        ["Celeriac send_many", *[NOT_MEASURED] * 5],
        ["Huey", "7,500", "3,500", "51", "0", "118"],
        ["Celery", *[NOT_MEASURED] * 5],
    ]


def test_batch_column_only_where_targeted_or_measured() -> None:
    m = {"celeriac": run(drain_per_s=1)}
    assert BATCH not in [k for k, _ in report.columns(SQLITE, m)]
    m["celeriac"][BATCH] = 60_000.0
    assert BATCH in [k for k, _ in report.columns(SQLITE, m)]
    assert report.table_rows(SQLITE, m)[0][2] == "60,000"


def verdicts(bench: Bench, m: dict[str, dict[str, float]]) -> list[tuple[str, str, str]]:
    return [
        (v.target, v.measured, v.verdict)
        for v in (report.evaluate(bench, t, m) for t in bench.targets)
    ]


def test_redis_targets_are_computed_from_the_medians() -> None:
    assert verdicts(REDIS, report.medians(redis_data())) == [
        ("drain/s >= 7,000/s", "7,100/s", "met"),
        ("drain/s >= 2x Huey's", "2.03x (7,100/s vs 3,500/s)", "met"),
        (
            "enqueue/s (one call at a time) >= 1.2x Huey's",
            "1.24x (9,300/s vs 7,500/s)",
            "met",
        ),
        ("Celeriac send_many: enqueue/s >= 50,000/s", NOT_MEASURED, NOT_MEASURED),
        ("round trip p50 ms <= 0.6 ms", "0.55 ms", "met"),
        ("worker RSS MB (prefork -c 2, after a drain) <= 60 MB", "59 MB", "met"),
    ]


def test_a_target_just_missed_is_not_met() -> None:
    m = report.medians(redis_data())
    m["huey -k process -w 2"]["drain_per_s"] = 3551  # 7,100 / 3,551 = 1.9994x
    m["celeriac prefork -c 2"]["rss_mb"] = 60.2
    got = {target: verdict for target, _, verdict in verdicts(REDIS, m)}
    assert got["drain/s >= 2x Huey's"] == "not met"
    assert got["worker RSS MB (prefork -c 2, after a drain) <= 60 MB"] == "not met"
    assert got["drain/s >= 7,000/s"] == "met"


def test_targets_against_an_absent_or_nan_peer_are_not_measured() -> None:
    m = {"celeriac": run(drain_per_s=5000, rt_p50_ms=1.5, rss_mb=70)}
    assert verdicts(SQLITE, m) == [
        ("drain/s >= 3x Huey's", NOT_MEASURED, NOT_MEASURED),
        ("round trip p50 ms <= 2 ms", "1.5 ms", "met"),
        ("worker RSS MB (prefork -c 2, after a drain) <= 60 MB", "70 MB", "not met"),
    ]
    m["huey"] = run(drain_per_s=math.nan)
    assert verdicts(SQLITE, m)[0][2] == NOT_MEASURED
    assert report.table_rows(SQLITE, m)[1][2] == "—"


def test_amqp_no_confirm_target_names_its_row() -> None:
    m = {
        "celeriac -c 2 redis nc": run(enqueue_per_s=15000),
        "dramatiq -p2 -t8": run(enqueue_per_s=14000),
    }
    got = report.evaluate(AMQP, AMQP.targets[1], m)
    assert got.target == "Celeriac confirm_publish=False: enqueue/s >= Dramatiq's"
    assert (got.measured, got.verdict) == ("1.07x (15,000/s vs 14,000/s)", "met")


def test_command_asks_only_for_the_rows_whose_package_is_installed(tmp_path: Path) -> None:
    bench = Bench(
        "x",
        "X",
        "x.py",
        [Row("celeriac", "Celeriac", "c"), Row("peer", "Peer", "p", needs="no_such_pkg_zz")],
        [Target("drain_per_s", ">=", 2, peer="peer")],
        "",
        quick_args=["--n", "5"],
    )
    argv = report.command(bench, True, 1, tmp_path / "x.json")
    out = str(tmp_path / "x.json")
    assert argv[1:] == ["x.py", "--n", "5", "--repeat", "1", "--json", out, "--systems", "c"]


def test_confirmed_publish_bench_has_its_own_columns_and_a_ratio_to_py_amqp() -> None:
    runs = {
        "delay()": [
            {"enqueue_confirmed_per_s": 1500.0, "wall_us": 667.0, "cpu_us": 150.0},
            {"enqueue_confirmed_per_s": 1600.0, "wall_us": 625.0, "cpu_us": 140.0},
            {"enqueue_confirmed_per_s": 1400.0, "wall_us": 714.0, "cpu_us": 160.0},
        ],
        "py-amqp": [{"enqueue_confirmed_per_s": 1700.0, "wall_us": 588.0, "cpu_us": 130.0}],
    }
    m = report.medians({"runs": runs})
    assert [label for _, label in report.columns(AMQP_CONFIRM, m)] == [
        "enqueue/s with confirms",
        "wall us per call",
        "client CPU us per call",
    ]
    assert report.table_rows(AMQP_CONFIRM, m) == [
        ["Celeriac delay()", "1,500", "667", "150"],
        ["py-amqp basic_publish", "1,700", "588", "130"],
        ["Celery delay(), confirm_publish", *[NOT_MEASURED] * 3],
    ]
    [target] = AMQP_CONFIRM.targets
    got = report.evaluate(AMQP_CONFIRM, target, m)
    assert got.target == "enqueue/s with confirms (within 10%) >= 0.9x py-amqp basic_publish's"
    assert (got.measured, got.verdict) == ("0.88x (1,500/s vs 1,700/s)", "not met")
    runs["delay()"] = [{"enqueue_confirmed_per_s": 1530.0, "wall_us": 650.0, "cpu_us": 150.0}]
    assert report.evaluate(AMQP_CONFIRM, target, report.medians({"runs": runs})).verdict == "met"


def test_confirmed_publish_bench_names_its_rows_with_its_own_flag(tmp_path: Path) -> None:
    argv = report.command(AMQP_CONFIRM, True, 1, tmp_path / "c.json")
    rows = [r.system for r in AMQP_CONFIRM.rows if report.installed(r.needs)]
    out = str(tmp_path / "c.json")
    assert argv[1:] == [
        "amqp_publish.py",
        "--n",
        "300",
        "--repeat",
        "1",
        "--json",
        out,
        "--rows",
        *rows,
    ]
    assert rows[:2] == ["delay()", "py-amqp"]


def sample_report(quick: bool) -> dict[str, Any]:
    meta = {
        "quick": quick,
        "repeat": 1 if quick else 3,
        "cpus": 2,
        "load_before": "0.50 0.40 0.30",
        "load_after": "1.50 0.90 0.60",
        "versions": "Python 3.11.7",
        "commit": "abc1234",
        "finished": "2026-12-07 04:00 UTC",
    }
    redis: dict[str, Any] = {"seconds": 12.0, "data": redis_data(), "error": None}
    redis["argv"] = ["python", "redis_vs_peers.py", "--systems", "huey -k process -w 2"]
    amqp: dict[str, Any] = {"argv": ["python", "amqp_vs_peers.py"], "seconds": 3.0, "data": None}
    amqp["error"] = "exit status 1: RuntimeError: boom"
    return {"meta": meta, "benches": {"redis": redis, "amqp": amqp}}


def test_markdown_marks_a_smoke_run_and_says_what_failed_or_did_not_run() -> None:
    text = report.render_markdown(sample_report(quick=True))
    assert text.count("SMOKE RUN") == 1
    assert "2 CPUs, load average 0.50 0.40 0.30 before, 1.50 0.90 0.60 after" in text
    assert "commit abc1234" in text
    assert "`python redis_vs_peers.py --systems 'huey -k process -w 2'` (12 s)." in text
    assert "| Celeriac | 9,300 | 7,100 | 0.55 | 0 | 59 |" in text
    assert "| drain/s >= 2x Huey's | 2.03x (7,100/s vs 3,500/s) | met |" in text
    assert "The bench failed: `exit status 1: RuntimeError: boom`" in text
    assert "| Dramatiq | " + " | ".join([NOT_MEASURED] * 6) + " |" in text
    assert "| drain/s >= 2x Dramatiq's | not measured | not measured |" in text
    assert text.split("## SQLite", 1)[1].count("Not run in this invocation.") == 1
    assert "SMOKE RUN" not in report.render_markdown(sample_report(quick=False))
