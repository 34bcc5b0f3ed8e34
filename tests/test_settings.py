"""Settings: Celery's names, did-you-mean, and kwargs > config object > environment > default."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest

from celeriac import Celeriac, ConfigurationError
from celeriac.settings import DEFAULT_BROKER_URL, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERIAC_RESULT_BACKEND", raising=False)


def test_unknown_setting_names_the_closest_one() -> None:
    with pytest.raises(ConfigurationError, match=r"'brokr_url'.*did you mean 'broker_url'"):
        Celeriac("proj", brokr_url="memory://")


@pytest.mark.parametrize(
    "set_it",
    [
        lambda conf: conf.update(task_serialiser="json"),
        lambda conf: conf.__setitem__("task_serialiser", "json"),
        lambda conf: conf["task_serialiser"],
    ],
)
def test_every_access_path_checks_the_name(set_it) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'task_serializer'"):
        set_it(Settings())


def test_unknown_name_without_a_close_match_has_no_hint() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings().update(zzz=1)
    assert "did you mean" not in str(info.value)


def test_default_when_nothing_is_set() -> None:
    # beside the module that creates the app (this one), not in the working directory
    expected = f"sqlite:///{Path(__file__).resolve().parent / 'celeriac.sqlite3'}"
    assert DEFAULT_BROKER_URL == "sqlite:///celeriac.sqlite3"
    assert Celeriac("proj").conf.broker_url == expected


def test_default_sqlite_file_without_a_module_file_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"Celeriac": Celeriac, "__name__": "interactive"}
    exec("app = Celeriac('proj')", namespace)  # as at the >>> prompt: no __file__
    assert namespace["app"].conf.broker_url == f"sqlite:///{tmp_path}/celeriac.sqlite3"  # type: ignore[attr-defined]


def test_attribute_assignment_is_checked_and_converted() -> None:
    app = Celeriac("proj", broker_url="memory://")
    with pytest.raises(ConfigurationError, match="did you mean 'beat_schedule'"):
        app.conf.beat_schedul = {}
    app.conf.result_expires = dt.timedelta(hours=1)
    app.conf.accept_content = "json"
    assert (app.conf.result_expires, app.conf.accept_content) == (3600.0, ["json"])
    # set by attribute: explicit, so a config object read later does not replace it
    app.config_from_object({"result_expires": 5})
    assert app.conf.result_expires == 3600.0


def test_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "memory://env")
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", "sqlite:///env.db")
    conf = Celeriac("proj").conf
    assert (conf.broker_url, conf.result_backend) == ("memory://env", "sqlite:///env.db")


def test_config_object_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "memory://env")
    app = Celeriac("proj")
    app.config_from_object({"broker_url": "memory://config"})
    assert app.conf.broker_url == "memory://config"


def test_kwargs_beat_config_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "memory://env")
    app = Celeriac("proj", broker_url="memory://kwarg", task_default_queue="kw")
    app.config_from_object(
        {"broker_url": "memory://config", "task_default_queue": "cfg", "result_expires": 5}
    )
    assert app.conf.broker_url == "memory://kwarg"
    assert app.conf.task_default_queue == "kw"
    assert app.conf.result_expires == 5  # not given as a kwarg: the config object's value


def test_conf_update_beats_config_object() -> None:
    app = Celeriac("proj")
    app.conf.update(task_default_queue="updated")
    app.config_from_object({"task_default_queue": "cfg"})
    assert app.conf.task_default_queue == "updated"


@pytest.fixture
def config_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name = "celeriac_test_celeryconfig"
    (tmp_path / f"{name}.py").write_text(
        "import os\n"
        "from datetime import timedelta\n"
        "broker_url = 'memory://module'\n"
        "result_expires = timedelta(minutes=2)\n"
        "accept_content = ('json', 'msgpack')\n"
        "def route(name, args, kwargs, options, task=None):\n"
        "    return {'queue': 'routed'}\n"
        "task_routes = route\n"
        "NOT_A_SETTING = 1\n"
        "def helper():\n"
        "    return 1\n"
        "class Alt:\n"
        "    task_default_queue = 'alt'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_config_from_module_path(config_module: str) -> None:
    app = Celeriac("proj")
    app.config_from_object(config_module)
    assert app.conf.broker_url == "memory://module"
    assert app.conf.result_expires == 120.0  # timedelta -> seconds
    assert app.conf.accept_content == ["json", "msgpack"]
    assert app.conf.task_routes.__name__ == "route"  # a setting may hold a function


def test_config_from_module_attribute_path(config_module: str) -> None:
    app = Celeriac("proj")
    app.config_from_object(f"{config_module}:Alt")
    assert app.conf.task_default_queue == "alt"


def test_config_from_unimportable_path() -> None:
    with pytest.raises(ConfigurationError, match="no_such_config_module"):
        Celeriac("proj").config_from_object("no_such_config_module")


def test_config_from_class() -> None:
    class Config:
        task_default_queue = "from-class"
        task_acks_late = False

    app = Celeriac("proj")
    app.config_from_object(Config)
    assert app.conf.task_default_queue == "from-class"
    assert app.conf.task_acks_late is False


def test_config_from_dict_with_a_typo() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'task_default_queue'"):
        Celeriac("proj").config_from_object({"task_defualt_queue": "x"})


def test_config_source_argument() -> None:
    app = Celeriac("proj", config_source={"task_default_queue": "src"})
    assert app.conf.task_default_queue == "src"


def test_celery_namespace_reads_only_prefixed_names() -> None:
    django_settings = {
        "CELERY_BROKER_URL": "memory://django",
        "CELERY_TASK_DEFAULT_QUEUE": "ns",
        "DEBUG": True,  # another framework's setting: not ours to check
        "task_default_queue": "ignored",
    }
    app = Celeriac("proj")
    app.config_from_object(django_settings, namespace="CELERY")
    assert app.conf.broker_url == "memory://django"
    assert app.conf.task_default_queue == "ns"


def test_a_celery_setting_without_a_counterpart_is_kept_with_a_warning(caplog) -> None:
    # A Celery project moving over sets these; they mean nothing here but are not typos.
    app = Celeriac("celery-settings", broker_url="memory://")
    with caplog.at_level("WARNING", logger="celeriac"):
        app.conf.broker_connection_retry_on_startup = True
        app.conf.update(worker_hijack_root_logger=False)
    assert app.conf.broker_connection_retry_on_startup is True
    assert app.conf.get("worker_hijack_root_logger") is False
    assert [r.getMessage() for r in caplog.records] == [
        "setting 'broker_connection_retry_on_startup' is Celery's and has no effect in Celeriac",
        "setting 'worker_hijack_root_logger' is Celery's and has no effect in Celeriac",
    ]
    with pytest.raises(ConfigurationError, match="did you mean 'broker_connection_timeout'"):
        app.conf.broker_conection_retry_on_startup = True  # a typo is still one
    with pytest.raises(ConfigurationError, match="unknown setting 'security_key'"):
        app.conf.security_key = "key.pem"  # never ignored silently: signing is set otherwise
