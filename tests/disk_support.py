"""A small real filesystem to fill up: a tmpfs of a few MB, mounted for one test.

Mounting needs root (it is how the full-disk tests reproduce ENOSPC without faking it). Without
it the tests are skipped with the reason, except under ``CI=true``, where they fail: CI can never
pass by skipping.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "8m"


class SmallDisk:
    """A mounted tmpfs at ``path``; :meth:`fill` takes all its free space, :meth:`free` gives
    it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (1 << 20, 4096, 1):  # big writes first, then whatever is left
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink()

    def file_size(self, name: str) -> int:
        """Size of a file on the disk; 0 when there is none."""
        try:
            return (self.path / name).stat().st_size
        except FileNotFoundError:
            return 0


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the full-disk tests must run)")
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        _unavailable("mounting a small tmpfs needs root")
    path = tmp_path / "small-disk"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(path)
    finally:
        # Lazy: a process of the test that is still ending may hold a file there.
        subprocess.run(["umount", "-l", str(path)], check=False)
