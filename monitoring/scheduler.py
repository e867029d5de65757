"""The in-process scheduler: a daemon thread per server process.

Every process publishes its own figures to Redis (when configured) so others can combine them; on
the embedded default (no Redis, so no Celery beat) the same thread also writes snapshots, evaluates
the rules, prunes and expires never-activated devices. Started from asgi.py only, so tests and management commands never run it.
"""
from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections

log = logging.getLogger(__name__)
_started = threading.Lock()
_thread: threading.Thread | None = None
_stop = threading.Event()


def does_snapshots() -> bool:
    mode = settings.XIAOZHI_MONITORING_SCHEDULER
    return mode == "on" or (mode == "auto" and not settings.REDIS_URL)


def start_if_configured() -> threading.Thread | None:
    """Start the thread once per process (a second call is a no-op); "off" disables it."""
    global _thread
    if settings.XIAOZHI_MONITORING_SCHEDULER == "off":
        return None
    with _started:
        if _thread is None or not _thread.is_alive():
            _stop.clear()
            _thread = threading.Thread(target=_run, name="monitoring-scheduler", daemon=True)
            _thread.start()
    return _thread


def stop() -> None:
    _stop.set()


def _run() -> None:
    from monitoring import aggregate, alerts, snapshots

    publish_every = settings.XIAOZHI_MONITORING_PUBLISH_SECONDS
    snapshot_every = settings.XIAOZHI_MONITORING_SNAPSHOT_SECONDS
    next_publish = next_snapshot = time.monotonic()
    next_prune = time.monotonic() + 60
    while not _stop.is_set():
        now = time.monotonic()
        try:
            if settings.REDIS_URL and now >= next_publish:
                aggregate.publish()
                next_publish = now + publish_every
            if does_snapshots() and now >= next_snapshot:
                combined = aggregate.current()
                snapshots.take(combined)
                alerts.evaluate_all(combined)
                next_snapshot = now + snapshot_every
            if does_snapshots() and now >= next_prune:
                snapshots.prune()
                from devices.records import expire_devices  # beat's devices-expire job, without Celery

                expire_devices()
                next_prune = now + 3600
        except Exception:  # noqa: BLE001 - keep monitoring alive through a bad tick
            log.exception("monitoring tick failed")
        finally:
            close_old_connections()
        _stop.wait(max(0.5, min(next_publish if settings.REDIS_URL else next_snapshot, next_snapshot) - time.monotonic()))
