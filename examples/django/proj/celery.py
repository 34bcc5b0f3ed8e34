import os

from celeriac import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
# Every CELERY_-prefixed name in Django's settings, without the prefix (CELERY_BROKER_URL ...).
app.config_from_object("django.conf:settings", namespace="CELERY")
# polls/tasks.py (and the tasks module of every installed app), imported when a worker starts.
app.autodiscover_tasks()
