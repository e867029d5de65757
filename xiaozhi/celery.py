"""The Celery app; it reads the ``CELERY_*`` Django settings (broker = Redis when REDIS_URL is set)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

app = Celery("xiaozhi")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
