"""Redis in Celery's layout: broker, result backend and beat store (imports redis-py)."""
