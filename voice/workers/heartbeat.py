"""Voice workers announce themselves in Redis, so ``/health`` on any Daphne process can say which
services have a live worker and which models it loaded (with ``XIAOZHI_WORKER_BACKEND=celery`` the
models are not in Daphne). One key per worker process, rewritten every ``INTERVAL`` seconds and
expiring after ``TTL``: a worker that dies or hangs drops out by itself, with nobody to clean up.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from django.conf import settings

from voice.workers.celery_service import REMOTE_SERVICES, redis_client

log = logging.getLogger(__name__)

INTERVAL = 10.0
TTL = 30  # three missed beats
_started = False
_lock = threading.Lock()


def _key_prefix() -> str:
    return f"xiaozhi:voice:worker:{settings.XIAOZHI_WORKER_QUEUE_PREFIX}:"


def announce(services: list[str], models: dict[str, list[str]], *, pid: int | None = None) -> dict:
    """Write (or refresh) this worker's record; returns it."""
    record = {"host": socket.gethostname(), "pid": pid or os.getpid(), "services": list(services),
              "models": {s: models.get(s, []) for s in services}, "at": time.time()}
    redis_client().set(f"{_key_prefix()}{record['host']}:{record['pid']}", json.dumps(record), ex=TTL)
    return record


def withdraw(pid: int | None = None) -> None:
    """Remove a worker's record now (it ended, or its supervisor saw it die): best effort."""
    try:
        redis_client().delete(f"{_key_prefix()}{socket.gethostname()}:{pid or os.getpid()}")
    except Exception as exc:  # noqa: BLE001 - Redis away: the record expires by itself
        log.warning("could not withdraw the worker heartbeat: %s", exc)


def start(services: list[str]) -> None:
    """Announce now and keep announcing from a daemon thread (once per process)."""
    global _started
    from voice.providers.registry import loaded_names

    with _lock:
        if not services or _started:
            return
        _started = True

    def beat():
        while True:
            try:
                announce(services, loaded_names())
            except Exception as exc:  # noqa: BLE001 - Redis away for a moment: try again next beat
                log.warning("worker heartbeat: %s", exc)
            time.sleep(INTERVAL)

    threading.Thread(target=beat, name="voice-worker-heartbeat", daemon=True).start()


def live_workers() -> dict[str, list[dict]]:
    """The workers that announced themselves within ``TTL``, by service."""
    client = redis_client()
    keys = list(client.scan_iter(match=f"{_key_prefix()}*", count=200))
    by_service: dict[str, list[dict]] = {s: [] for s in REMOTE_SERVICES}
    for raw in client.mget(keys) if keys else []:
        if raw is None:  # expired between the scan and the read
            continue
        record = json.loads(raw)
        record["age_s"] = round(max(time.time() - record.pop("at", 0.0), 0.0), 1)
        for service in record.get("services", []):
            by_service.setdefault(service, []).append(record)
    return by_service


def missing_services(workers: dict[str, list[dict]]) -> list[str]:
    """Services with no live worker; an optional one (vision) only when this server has a provider for it."""
    from voice.providers import registry

    needed = [s for s in REMOTE_SERVICES if s not in registry.OPTIONAL_KINDS or registry.resolve(s)]
    return [s for s in needed if not workers.get(s)]
