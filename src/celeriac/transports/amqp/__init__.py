"""RabbitMQ (AMQP 0-9-1) in Celery's layout: broker and the ``rpc://`` result backend."""
