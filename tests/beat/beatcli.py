"""``celeriac`` with the ``beat`` group, whether or not ``cli/main.py`` registers it yet.

Run as ``python beatcli.py -A beat_app beat ...``: the same root command, options and app
loading as ``celeriac -A beat_app beat ...``.
"""

from __future__ import annotations

from celeriac.cli.beat import beat
from celeriac.cli.main import cli

if "beat" not in cli.commands:
    cli.add_command(beat)

if __name__ == "__main__":
    cli(prog_name="celeriac")
