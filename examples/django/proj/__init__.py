# As in Celery's Django guide: the app is loaded whenever Django starts, so that tasks
# (and @app.task in the apps' tasks modules) use it.
from .celery import app as celery_app

__all__ = ("celery_app",)
