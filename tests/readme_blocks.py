"""The README's Python code blocks, found and run (see tests/e2e/test_readme.py).

Rules for a ```` ```python ```` block in README.md:

* a block whose first line is ``# name.py`` is that file of the tutorial's project: it is
  written into the project's directory (the worker and the other blocks import it);
* a block with ``>>>`` prompts is a doctest: its outputs are compared;
* any other block is run as a script;
* a block preceded by the line ``<!-- readme-test: fragment (why) -->`` is not run (it names
  things that are placeholders); it must still compile unless it has prompts.

Blocks run in the order of the README, each in a fresh namespace, in one process whose
working directory is not the project's.
"""

from __future__ import annotations

import doctest
import json
import re
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

FRAGMENT = "<!-- readme-test: fragment"
_FENCE = re.compile(r"^```(\w*)\s*$")
_FILE = re.compile(r"^# ([\w/]+\.py)\s*$")


@dataclass(frozen=True)
class Block:
    lineno: int  # of the first line of code, 1-based
    lang: str
    code: str
    fragment: bool
    filename: str | None

    @property
    def kind(self) -> str:
        if self.lang != "python":
            return "other"
        if self.fragment:
            return "fragment"
        if self.filename:
            return "file"
        return "doctest" if ">>>" in self.code else "script"


def blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        code = "\n".join(lines[start:end]) + "\n"
        before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        first = lines[start] if start < end else ""
        name = _FILE.match(first)
        out.append(
            Block(
                start + 1,
                m.group(1),
                code,
                before.strip().startswith(FRAGMENT),
                name.group(1) if name else None,
            )
        )
        i = end + 1
    return out


def run(items: list[Block], readme: str) -> list[str]:
    """Run doctest and script blocks; the failures, each naming its README line."""
    failures = []
    for block in items:
        where = f"{readme}:{block.lineno}"
        globs: dict[str, object] = {"__name__": f"readme_line_{block.lineno}"}
        if block.kind == "doctest":
            test = doctest.DocTestParser().get_doctest(
                block.code, globs, where, readme, block.lineno - 1
            )
            out: list[str] = []
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test, out=out.append)
            if runner.failures:
                failures.append(f"{where}: doctest failed\n{''.join(out)}")
        elif block.kind == "script":
            try:
                exec(compile(block.code, where, "exec"), globs)
            except BaseException:
                failures.append(f"{where}: raised\n{traceback.format_exc()}")
    return failures


def main() -> int:
    readme, items = sys.argv[1], [Block(**b) for b in json.loads(Path(sys.argv[2]).read_text())]
    failures = run(items, readme)
    print("\n\n".join(failures) if failures else "ok")
    return 1 if failures else 0


def dump(items: list[Block], path: Path) -> None:
    path.write_text(json.dumps([asdict(b) for b in items]))


if __name__ == "__main__":
    sys.exit(main())
