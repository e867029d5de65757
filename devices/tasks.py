"""Celery tasks of the devices app, run by beat (settings.CELERY_BEAT_SCHEDULE)."""
from celery import shared_task

from devices import records


@shared_task(name="devices.tasks.expire_devices", ignore_result=True)
def expire_devices() -> int:
    return records.expire_devices()
