"""What one process measures: the machine (psutil) and the voice side (voice.live_stats, worker services).

Everything returned is plain JSON so it can be published to Redis and stored in a snapshot as is.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time

import psutil

from voice import live_stats

_process = psutil.Process()
_process.cpu_percent(None)  # the first call primes the counter; later calls measure since the last one
psutil.cpu_percent(None)


MIN_CPU_INTERVAL = 1.0  # psutil's non-blocking CPU figure is noise (0 or 100) over a few milliseconds
_cpu = {"at": time.monotonic(), "host": None, "process": None}


def _cpu_percent() -> tuple[float, float]:
    """Host and process CPU since the previous reading, re-read at most once a second."""
    now = time.monotonic()
    if _cpu["host"] is None or now - _cpu["at"] >= MIN_CPU_INTERVAL:
        _cpu.update(at=now, host=psutil.cpu_percent(None), process=_process.cpu_percent(None))
    return _cpu["host"], _cpu["process"]


_event_loop: asyncio.AbstractEventLoop | None = None


def watch_event_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Name the loop that serves the sockets (the server process calls this at start), so the
    figures can count its live tasks: a task left behind by a closed connection is a leak that
    neither RSS nor the gauges show for a long time."""
    global _event_loop
    _event_loop = loop


def asyncio_tasks() -> int | None:
    """Unfinished tasks on the watched loop; None in a process that serves no sockets. Read from a
    request thread: ``asyncio.all_tasks`` copies the task set with retries, which is safe there."""
    if _event_loop is None or _event_loop.is_closed():
        return None
    return len(asyncio.all_tasks(_event_loop))


def open_fds() -> int | None:
    try:
        return _process.num_fds()
    except (AttributeError, psutil.Error):  # pragma: no cover - not on a POSIX system
        return None


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def system() -> dict:
    """Machine-wide figures plus this process's own RSS and CPU (non-blocking: since the last call)."""
    vm = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage("/")
        disk_percent = disk.percent
    except OSError:  # pragma: no cover - no root filesystem view
        disk_percent = None
    net = psutil.net_io_counters()
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        load = [None, None, None]
    rss = _process.memory_info().rss
    host_cpu, proc_cpu = _cpu_percent()
    return {
        "cpu_percent": host_cpu,
        "cpu_count": psutil.cpu_count(),
        "memory_percent": vm.percent,
        "memory_used_bytes": vm.total - vm.available,
        "memory_total_bytes": vm.total,
        "disk_percent": disk_percent,
        "net_bytes_sent": net.bytes_sent if net else None,
        "net_bytes_recv": net.bytes_recv if net else None,
        "load_1": load[0], "load_5": load[1], "load_15": load[2],
        "process_rss_bytes": rss,
        "process_cpu_percent": proc_cpu,
        "process_open_fds": open_fds(),
        "process_asyncio_tasks": asyncio_tasks(),
    }


def service_occupancy() -> dict:
    """Per-service queue figures; only services already built (never builds them as a side effect)."""
    from voice.workers import built_services

    return {name: service.occupancy() for name, service in built_services().items()}


def application() -> dict:
    """The voice side of this process: counters, gauges, turns/minute, latency percentiles, queues."""
    snap = live_stats.snapshot()
    counters = snap["counters"]
    errors = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("errors:")}
    cache = {}
    for key, value in counters.items():
        for kind in ("cache_hits", "cache_misses"):
            if key.startswith(kind + ":"):
                cache.setdefault(key.split(":", 1)[1], {"cache_hits": 0, "cache_misses": 0})[kind] += value
    return {
        "counters": {k: v for k, v in counters.items() if not k.startswith("errors:")},
        "errors": errors,
        "gauges": snap["gauges"],
        "turns_per_minute": snap["turns_per_minute"],
        "latency_ms": snap["latency_ms"],
        "services": service_occupancy(),
        "cache": cache,
    }


def collect() -> dict:
    """This process's full figures, stamped with its identity and the time."""
    return {"process": process_id(), "pid": os.getpid(), "at": time.time(),
            "system": system(), "app": application()}


def database() -> dict:
    """Figures only the database knows (same for every process, so read once per snapshot)."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from devices.models import Device, Turn

    since = timezone.now() - timedelta(seconds=settings.XIAOZHI_MONITORING_ERROR_WINDOW_SECONDS)
    recent = Turn.objects.filter(created_at__gte=since)
    aborted = recent.filter(error=live_stats.ABORTED).count()
    return {
        "devices_online": Device.objects.filter(online=True).count(),
        "turns_window": recent.count(),
        # A turn its user cut short (barge-in) is an abort, not a failure: it must not raise the error rate.
        "errors_window": recent.exclude(error="").count() - aborted,
        "aborts_window": aborted,
    }
