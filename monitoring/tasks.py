"""Celery tasks run by beat when Redis is configured; they take ids, never model instances."""
from celery import shared_task

from monitoring import aggregate, alerts, snapshots


def servers() -> dict:
    """The server processes' combined figures; the worker itself is not one of them."""
    return aggregate.current(include_self=False)


@shared_task(name="monitoring.tasks.snapshot", ignore_result=True)
def snapshot() -> int:
    return snapshots.take(servers()).pk


@shared_task(name="monitoring.tasks.evaluate_all", ignore_result=True)
def evaluate_all() -> dict:
    return {str(k): v for k, v in alerts.evaluate_all(servers()).items()}


@shared_task(name="monitoring.tasks.evaluate_rule", ignore_result=True)
def evaluate_rule(rule_id: int) -> str:
    return alerts.evaluate_rule(rule_id, servers())


@shared_task(name="monitoring.tasks.prune", ignore_result=True)
def prune() -> int:
    return snapshots.prune()
