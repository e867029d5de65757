"""The Celery app; it reads the ``CELERY_*`` Django settings (broker = Redis when REDIS_URL is set).

Voice calls (``voice.tasks.run_operation``) are short and latency-bound: a worker takes one call at a
time (prefetch 1), so a busy worker never holds a call another could start, and calls run in arrival
order; their results travel over the channel layer, never the result backend."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

app = Celery("xiaozhi")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.worker_prefetch_multiplier = 1
app.autodiscover_tasks()
