"""``celeriac worker -n`` expands node names as Celery's ``-n name@%h`` does."""

from __future__ import annotations

import socket

from celeriac.cli.control import expand_nodename


def test_host_short_name_and_domain_are_expanded(monkeypatch):
    monkeypatch.setattr(socket, "getfqdn", lambda: "box.example.org")
    assert expand_nodename("w1@%h") == "w1@box.example.org"
    assert expand_nodename("w1@%n") == "w1@box"
    assert expand_nodename("w1@%n.%d") == "w1@box.example.org"
    assert expand_nodename("plainhost") == "celery@plainhost"
    assert expand_nodename(None) is None
