"""The Lua scripts, read from this package's files."""

from __future__ import annotations

from importlib import resources


def lua(*names: str) -> str:
    """The named ``.lua`` files of this package, in order, as one script (``store_results.lua``
    goes first in scripts that store results as they work)."""
    folder = resources.files("celeriac.transports.redis")
    return "\n".join(folder.joinpath(name).read_text() for name in names)
