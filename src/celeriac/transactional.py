"""Sending a task only if the caller's database transaction commits.

``task.apply_async(..., transaction=conn)`` with a psycopg connection to the ``postgresql://``
broker's database inserts the message through that connection, inside whatever transaction it
has open: rolled back, no task; committed, the task is delivered (its ``NOTIFY`` goes out with
the commit). ``connection=`` is Celery's name for a broker connection, hence another name.

``delay_on_commit()`` and ``apply_async_on_commit()`` are Celery 5.4's (``DjangoTask``): with
Django configured they send from ``django.db.transaction.on_commit`` (at once outside an atomic
block, as Django does); without Django they send at once, since there is no transaction to wait
for. Both return None, as Celery's do: the task id is not known until the send.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Broker
    from celeriac.protocol.publication import Publication


def publish_in(
    app: Celeriac, broker: Broker, publications: Sequence[Publication], transaction: Any
) -> None:
    """Insert ``publications`` through the caller's connection ``transaction``, with the
    publish signals around it (``after_task_publish`` means inserted, not yet committed)."""
    from celeriac import sending, signals

    publish = getattr(broker, "publish_in", None)
    if publish is None:
        raise ConfigurationError(
            "transaction= needs a postgresql:// broker (the message is inserted through the "
            f"caller's connection); this app's broker is {type(broker).__name__}"
        )
    sending.announce(app, signals.before_task_publish, publications)
    publish(transaction, publications)
    sending.announce(app, signals.after_task_publish, publications)


def on_commit(send: Callable[[], object]) -> None:
    """Run ``send`` when the current Django transaction commits, or now without Django."""
    try:
        from django.conf import settings
    except ImportError:
        send()
        return
    if not settings.configured:
        send()
        return
    from django.db import transaction

    transaction.on_commit(send)
