"""bench/report_chart.py: a well-formed SVG with one bar per measured value, ratios labelled."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import report
import report_chart
from report_chart import Group, Panel

from tests.bench.test_report import sample_report

SVG = "{http://www.w3.org/2000/svg}"


def bars(svg: str) -> list[tuple[str, float]]:
    root = ET.fromstring(svg)
    return [
        (e.attrib["data-series"], float(e.attrib["data-value"]))
        for e in root.iter(f"{SVG}rect")
        if e.get("class") == "bar"
    ]


def notes(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [e.text or "" for e in root.iter(f"{SVG}text") if e.get("class") == "note"]


def test_one_bar_per_measured_value_none_for_a_missing_one() -> None:
    svg = report_chart.render(
        [
            Panel("A", [Group("x", {"drain_per_s": 10.0, "enqueue_per_s": 20.0})]),
            Panel("B", [Group("y", {"drain_per_s": 5.0, "enqueue_per_s": None}, "a\nb")]),
        ],
        "t & <u>",
    )
    assert bars(svg) == [("drain_per_s", 10.0), ("enqueue_per_s", 20.0), ("drain_per_s", 5.0)]
    assert notes(svg) == ["a", "b"]
    assert "t &amp; &lt;u&gt;" in svg


def test_bar_heights_scale_to_the_panels_nice_ceiling() -> None:
    svg = report_chart.render([Panel("A", [Group("x", {"drain_per_s": 7100.0})])])
    (bar,) = (e for e in ET.fromstring(svg).iter(f"{SVG}rect") if e.get("class") == "bar")
    assert report_chart.nice_ceiling(7100) == 10_000
    assert float(bar.attrib["height"]) == pytest.approx(report_chart.PLOT_HEIGHT * 0.71, abs=0.1)


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (1, 1), (1.5, 2), (2.2, 2.5), (3, 5), (7100, 10_000), (14158, 20_000), (0.3, 0.5)],
)
def test_nice_ceiling(value: float, ceiling: float) -> None:
    assert report_chart.nice_ceiling(value) == pytest.approx(ceiling)


def test_report_chart_bars_ratios_and_absent_rows() -> None:
    """Redis measured for Celeriac and Huey, RabbitMQ failed, SQLite not run: 4 bars in all."""
    svg = report.render_chart(sample_report(quick=True))
    assert bars(svg) == [
        ("drain_per_s", 7100.0),
        ("enqueue_per_s", 9300.0),
        ("drain_per_s", 3500.0),
        ("enqueue_per_s", 7500.0),
    ]
    # Huey's group: Celeriac's ratios; the 8 rows not measured (Celeriac send_many and Celery;
    # RabbitMQ's 4; SQLite's 2)
    assert notes(svg) == [
        "not measured",
        "Celeriac / Huey:",
        "drain 2.03x, enqueue 1.24x",
        *["not measured"] * 7,
    ]
    assert "SMOKE RUN" in svg


def test_write_docs_renders_both_files_from_a_saved_report(tmp_path: Path) -> None:
    """What ``--from-json`` does: the markdown links the chart written beside it."""
    report.write_docs(sample_report(quick=False), tmp_path / "docs")
    text = (tmp_path / "docs" / "performance.md").read_text()
    assert "![drain and enqueue per system](performance.svg)" in text
    svg = (tmp_path / "docs" / "performance.svg").read_text()
    assert len(bars(svg)) == 4
