"""The fault suite's results: each scenario test reports (lost, duplicated, time to recover);
a run can write them as ``docs/reliability.md``.

Results are merged into ``docs/reliability.json`` (by test and broker) and the Markdown is
rendered from all of it, so a run of the short suite keeps the last recorded results of the long
one (``pytest -m soak``), and the other way round.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.faults.matrix import BROKERS, MATRIX, NA, XFail

REGENERATE = (
    "CELERIAC_RELIABILITY_REPORT=docs/reliability.md .venv/bin/pytest tests/faults -q "
    "-p no:cacheprovider            # short suite (CI)\n"
    "CELERIAC_RELIABILITY_REPORT=docs/reliability.md FAULT_REPEAT=20 FAULT_SOAK_SECONDS=600 "
    ".venv/bin/pytest tests/faults -m soak -q -p no:cacheprovider   # long suite"
)


@dataclass
class Result:
    key: str
    broker: str
    lost: int | None = None
    duplicated: int | None = None
    allowed: int | None = None  # duplicates the criterion allows (tasks in flight at the fault)
    recover_s: float | None = None
    detail: str = ""
    outcome: str = ""
    seconds: float = 0.0
    when: str = ""


#: This session's results, by pytest node id.
RESULTS: dict[str, Result] = {}


class Recorder:
    """Handed to a scenario test: it fills in numbers *before* asserting on them, so a failing
    (or xfail) run still reports what it saw."""

    def __init__(self, nodeid: str, key: str, broker: str) -> None:
        self.result = RESULTS[nodeid] = Result(key, broker)

    def __call__(
        self,
        *,
        lost: int | None = None,
        duplicated: int | None = None,
        allowed: int | None = None,
        recover: float | None = None,
        detail: str | None = None,
    ) -> None:
        r = self.result
        if lost is not None:
            r.lost = lost
        if duplicated is not None:
            r.duplicated = duplicated
        if allowed is not None:
            r.allowed = allowed
        if recover is not None:
            r.recover_s = round(recover, 2)
        if detail is not None:
            r.detail = detail

    def note(self, text: str) -> None:
        self.result.detail = f"{self.result.detail}; {text}" if self.result.detail else text


def write(path: Path) -> None:
    store = path.with_suffix(".json")
    data: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cells: dict[str, list[Result]] = {}
    for result in RESULTS.values():
        if result.outcome:
            cells.setdefault(f"{result.key}|{result.broker}", []).append(result)
    for cell, results in cells.items():
        worst = combine(results)
        worst.when = stamp
        data[cell] = asdict(worst)
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    path.write_text(render(data))


_RANK = {"FAIL": 3, "XPASS": 2, "xfail": 1, "pass": 0}


def combine(results: list[Result]) -> Result:
    """One cell's repetitions (the long suite's seeds) as their worst case."""
    if len(results) == 1:
        return results[0]

    def badness(r: Result) -> tuple[int, int, int, float]:
        return (_RANK.get(r.outcome, 3), r.lost or 0, r.duplicated or 0, r.recover_s or 0.0)

    worst = max(results, key=badness)
    recovers = [r.recover_s for r in results if r.recover_s is not None]
    return Result(
        worst.key,
        worst.broker,
        max((r.lost or 0 for r in results), default=None),
        max((r.duplicated or 0 for r in results), default=None),
        worst.allowed,
        max(recovers) if recovers else None,
        f"worst of {len(results)} runs: {worst.detail}",
        worst.outcome,
        round(sum(r.seconds for r in results), 1),
    )


def _cell(res: dict[str, Any] | None) -> list[str]:
    if res is None:
        return ["not run", "", "", "", ""]
    dup = "" if res["duplicated"] is None else str(res["duplicated"])
    if res.get("allowed") is not None and res["duplicated"] is not None:
        dup += f" (allowed {res['allowed']})"
    return [
        res["outcome"],
        "" if res["lost"] is None else str(res["lost"]),
        dup,
        "" if res["recover_s"] is None else f"{res['recover_s']:.1f} s",
        res["detail"].replace("|", "/"),
    ]


def _tags(entry: Any) -> str:
    tags = [
        f"#{entry.scenario}" if entry.scenario else "",
        f"issue {entry.issue}" * bool(entry.issue),
    ]
    return ", ".join(t for t in tags if t)


def render(data: dict[str, Any]) -> str:
    out = [
        "# Reliability: fault scenarios x brokers",
        "",
        "Written by the fault suite (`tests/faults/`); do not edit by hand. Regenerate with:",
        "",
        "```",
        REGENERATE,
        "```",
        "",
        "Scenarios are those of `shared/RELIABILITY.md` §2 (numbers in the first column) and the "
        "failures reproduced in issue 13 (letters). Every run of a recording task is written to "
        "a ledger outside the broker under test: *lost* = tasks whose publish returned but that "
        "never completed a run, *duplicated* = tasks with more than one completed run (the "
        "criterion allows duplicates only for tasks in flight at the fault), *time to recover* "
        "= from the fault (or its end) until the work it hit was done again. *xfail* = a known "
        "failure of issue 13, reproduced by this run (the test is marked `xfail(strict=True)`: "
        "when the fix lands it passes, fails the suite, and the mark goes).",
        "",
        f"Machine: {platform.machine()}, 2 cores shared, Python {platform.python_version()}.",
        "",
    ]
    for long in (False, True):
        out += [
            "## Long suite (`pytest -m soak`, on demand)" if long else "## Short suite (CI)",
            "",
            *(
                [
                    "Each row says the length it was recorded with (`worst of N runs`, seconds); "
                    "RELIABILITY.md asks for 20 repetitions, 10 min of backpressure and a 24 h "
                    "soak.",
                    "",
                ]
                if long
                else []
            ),
            "| # | issue | scenario | broker | result | lost | duplicated | time to recover "
            "| observed | run |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        na: list[str] = []
        for key, entry in MATRIX.items():
            if entry.long != long:
                continue
            for broker in BROKERS:
                cell = entry.cells[broker]
                if isinstance(cell, NA):
                    num = f"#{entry.scenario} " if entry.scenario else ""
                    na.append(f"* {num}{entry.title}, {broker}: {cell.reason}")
                    continue
                res = data.get(f"{key}|{broker}")
                outcome, lost, dup, rec, detail = _cell(res)
                if isinstance(cell, XFail) and res is not None:
                    outcome = f"{outcome} ({cell.reason})"
                when = res["when"] if res else ""
                number = entry.scenario or "-"
                out.append(
                    f"| {number} | {entry.issue} | {entry.title} | {broker} | {outcome} | "
                    f"{lost} | {dup} | {rec} | {detail} | {when} |"
                )
        out += ["", "Pass criteria:", ""]
        out += [
            f"* `{key}` ({_tags(e)}): {e.criterion}"
            for key, e in MATRIX.items()
            if e.long == long and any(not isinstance(c, NA) for c in e.cells.values())
        ]
        if na:
            out += ["", "Not applicable:", "", *na]
        out.append("")
    return "\n".join(out)
