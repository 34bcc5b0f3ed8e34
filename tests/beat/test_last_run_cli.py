"""``celeriac beat list``'s "last run" is when the entry's message last went to the broker:
"never" for an entry beat has only anchored, a send's time for one it sent."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from tests.beat.conftest import BeatEnv, wait_for

pytestmark = pytest.mark.e2e


def test_last_run_is_the_last_send_not_the_anchor(sqlite_beats: BeatEnv) -> None:
    env = sqlite_beats
    started = time.time()
    env.start_beat("last-run")
    wait_for(env.depth, 15, "the first message of 'often'")
    env.stop_beats()  # nothing moves while the CLI reads
    [(entry, _, _), *rest] = env.ticks()
    assert (entry, rest) == ("often", []), env.logs()

    listed = env.cli("beat", "list", "--json", schedule="last-run")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)["entries"]}
    hourly, often = rows["hourly"], rows["often"]
    # Both were anchored when beat started; only 'often' was sent, a second later.
    assert hourly["last_sent"] is None and started <= hourly["last_tick"] <= time.time()
    assert often["last_tick"] - hourly["last_tick"] == pytest.approx(1.0, abs=0.5)
    assert often["last_tick"] <= often["last_sent"] <= time.time()

    env.env["COLUMNS"] = "200"  # one line per row (rich wraps to the terminal's width)
    table = env.cli("beat", "list", schedule="last-run")
    assert table.returncode == 0, table.stderr
    lines = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if "│" in line}
    sent = dt.datetime.fromtimestamp(often["last_sent"], dt.timezone.utc)
    cells = {name: [c.strip() for c in lines[name].split("│")] for name in ("often", "hourly")}
    assert cells["hourly"][6] == "never", table.stdout
    assert cells["often"][6] == sent.strftime("%Y-%m-%d %H:%M:%S UTC"), table.stdout
