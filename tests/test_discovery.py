"""app.autodiscover_tasks(): lazy, skips packages without a tasks module, raises real errors."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from celeriac import Celeriac


def make_packages(root: Path, tag: str) -> tuple[str, str, str]:
    with_tasks, without, broken = f"a_{tag}", f"b_{tag}", f"c_{tag}"
    for name in (with_tasks, without, broken):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
    (root / with_tasks / "tasks.py").write_text(
        "from celeriac.current import current_app\n"
        "@current_app().task\n"
        "def ping():\n    return 'pong'\n"
    )
    (root / broken / "tasks.py").write_text("import no_such_module_here\n")
    return with_tasks, without, broken


def test_discovery_waits_for_import_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    with_tasks, without, _ = make_packages(tmp_path, uuid.uuid4().hex[:8])
    app = Celeriac("disc", broker_url="memory://")
    app.autodiscover_tasks([with_tasks, without])
    assert f"{with_tasks}.tasks.ping" not in app.tasks  # lazy, as in Celery
    app.import_modules()
    assert app.tasks[f"{with_tasks}.tasks.ping"]() == "pong"
    assert f"{without}.tasks" not in sys.modules


def test_an_error_inside_a_tasks_module_is_raised(tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _, _, broken = make_packages(tmp_path, uuid.uuid4().hex[:8])
    app = Celeriac("disc", broker_url="memory://")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        app.autodiscover_tasks(lambda: [broken], force=True)
