"""Helpers for testing code that uses Celeriac: a pytest plugin (:mod:`.pytest_plugin`) with
``celeriac_app`` and ``celeriac_worker`` fixtures, as Celery's ``celery.contrib.pytest``."""
