"""The dead-letter queue's caps as RabbitMQ queue arguments (see
:mod:`celeriac.brokers.dead_letters`).

``x-max-length`` drops the oldest message (the head) when a new one would pass the count, and
``x-message-ttl`` drops a message that has waited longer, both done by RabbitMQ itself. Queue
arguments are fixed at the queue's first declaration: a queue declared before with others keeps
them (the broker logs so, and a policy caps it instead: see the README).
"""

from __future__ import annotations

from typing import Any

from celeriac.transports.amqp.options import AMQPOptions


def dead_letter_arguments(opts: AMQPOptions) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if opts.dead_letter_max_count:
        args["x-max-length"] = int(opts.dead_letter_max_count)
    if opts.dead_letter_max_age:
        args["x-message-ttl"] = int(opts.dead_letter_max_age * 1000)
    return args
