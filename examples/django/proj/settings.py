import os

SECRET_KEY = "example-only"
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "polls"]
ROOT_URLCONF = "proj.urls"
DATABASES = {}
USE_TZ = True

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "sqlite:///celeriac.sqlite3")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_TASK_TIME_LIMIT = 30
