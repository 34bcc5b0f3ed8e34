"""The bench scripts import each other as top-level modules (they run from bench/): so do we.

Appended, not prepended, so no bench module can shadow an installed one.
"""

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)
