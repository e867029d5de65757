"""Writing and pruning MetricSnapshot rows (called by the Celery tasks and the in-process scheduler)."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from monitoring import aggregate
from monitoring.models import MetricSnapshot


def take(combined: dict | None = None) -> MetricSnapshot:
    """Store the combined figures of all processes now."""
    combined = combined or aggregate.current()
    flat = combined["flat"]
    return MetricSnapshot.objects.create(
        created_at=timezone.now(),
        source="combined" if settings.REDIS_URL else next(iter(combined["processes"]), ""),
        processes=combined["process_count"],
        cpu_percent=flat["cpu_percent"],
        memory_percent=flat["memory_percent"],
        connected_devices=flat["connected_devices"],
        active_turns=flat["active_turns"],
        ttfa_p95_ms=flat["ttfa_p95_ms"],
        error_rate=flat["error_rate"],
        metrics=combined,
    )


def prune(now=None) -> int:
    """Delete snapshots older than the retention period; returns how many."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.XIAOZHI_MONITORING_RETENTION_DAYS)
    deleted, _ = MetricSnapshot.objects.filter(created_at__lt=cutoff).delete()
    return deleted
