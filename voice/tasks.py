"""Celery tasks of the voice app: one task runs any voice operation (see ``voice.workers``)."""
from celery import shared_task

from voice.workers import celery_worker


@shared_task(name="voice.run_operation", ignore_result=True)
def run_operation(call_id: str, operation: str, reply: str, deadline: float, enqueued: float) -> str:
    return celery_worker.serve(call_id, operation, reply, deadline, enqueued)
