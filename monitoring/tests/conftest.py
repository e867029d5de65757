"""Monitoring fixtures: clean per-process figures and a Redis key space of the test's own."""
import uuid

import pytest

from voice import live_stats


def seed_rules():
    """The data migration's rules again: a transactional test's flush removes migrated rows."""
    import importlib

    from django.apps import apps

    importlib.import_module("monitoring.migrations.0002_seed_rules").seed(apps, None)


@pytest.fixture(autouse=True)
def clean_monitoring(settings, request):
    settings.XIAOZHI_MONITORING_REDIS_PREFIX = f"test-monitoring-{uuid.uuid4().hex[:8]}:"
    settings.XIAOZHI_MONITORING_WEBHOOK_URL = ""
    live_stats.clear()
    if request.node.get_closest_marker("django_db") or "live_server" in request.fixturenames:
        request.getfixturevalue("live_server" if "live_server" in request.fixturenames else "db")
        seed_rules()
    yield
    live_stats.clear()
    from monitoring import aggregate

    client = aggregate.redis_client()
    if client is not None:
        keys = list(client.scan_iter(match=settings.XIAOZHI_MONITORING_REDIS_PREFIX + "*"))
        if keys:
            client.delete(*keys)
