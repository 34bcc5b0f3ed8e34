"""The layout the README describes is the one on disk."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "celeriac"


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Project layout", 1)[1]
    return section.split("```", 2)[1]


def test_every_module_the_readme_layout_names_exists() -> None:
    block = _layout_block()
    files = set(re.findall(r"\b[a-z_]+\.(?:py|lua)\b", block))
    names = files | set(re.findall(r"^\s*([a-z_]+/)", block, re.MULTILINE))
    assert len(names) > 30  # the block was read, not an empty match
    on_disk = {p.name for p in SRC.rglob("*.py")} | {p.name for p in SRC.rglob("*.lua")}
    folders = {f"{p.name}/" for p in SRC.rglob("*") if p.is_dir()}
    folders |= {"src/", "tests/", "bench/", "celeriac/", "e2e/"}
    missing = sorted(n for n in names if n not in on_disk and n not in folders)
    assert missing == []


def test_no_module_is_over_600_lines() -> None:
    """Small modules with one job each (STYLE.md): a long one says it has several."""
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert long == {}
