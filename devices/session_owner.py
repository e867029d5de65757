"""Which server process owns each open session row, and closing the rows whose owner is gone.

A server killed outright (SIGKILL, the OOM killer, a power cut) runs no disconnect: its session rows
stay open and its devices "online" in the admin for ever. Each row therefore names its owner (host,
pid and the process's start time, since a pid is reused) and carries a heartbeat the owner renews
every ``database.session_heartbeat`` seconds for the sockets it still holds. The sweep closes:

- rows of this host whose owner process no longer exists (at start-up this catches a crash at once);
- rows of any host whose heartbeat is older than 3 periods (a dead machine, a frozen process);
- rows of this very process whose socket it no longer holds (a close lost in an outage).

Then devices left without an open session are marked offline. The sweep and the heartbeat run on a
daemon thread started by the server entry point (``python -m xiaozhi.server``, xiaozhi/server.py; a bare
``daphne`` runs none, and its rows would be closed by a sweeping server after 3 periods); a database
outage only delays them.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

import psutil
from django import db
from django.db.models import Exists, OuterRef
from django.utils import timezone

from devices.models import Device, DeviceSession
from devices.outages import database as database_outage

log = logging.getLogger(__name__)

STALE_PERIODS = 3
HEARTBEAT_LOST = "server heartbeat lost"
START_TIME_SLACK = 1.0  # seconds: create_time is read from /proc with this precision or better


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started_at: float

    def fields(self) -> dict:
        return {"server_host": self.host, "server_pid": self.pid, "server_started_at": self.started_at}


@lru_cache(maxsize=4)
def _owner(pid: int) -> Owner:
    return Owner(socket.gethostname()[:255], pid, psutil.Process(pid).create_time())


def this_process() -> Owner:
    return _owner(os.getpid())  # keyed by pid: a forked worker is an owner of its own


def _alive(pid: int | None, started_at: float | None) -> bool:
    if not pid:
        return False
    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return started_at is None or abs(created - started_at) <= START_TIME_SLACK


# -- the sockets this process holds (the consumers register and release them) ------------------------------
_held: set[int] = set()
_held_lock = threading.Lock()


def hold(session_pk: int) -> None:
    with _held_lock:
        _held.add(session_pk)


def release(session_pk: int) -> None:
    with _held_lock:
        _held.discard(session_pk)


def held() -> set[int]:
    with _held_lock:
        return set(_held)


def heartbeat(now=None) -> int:
    """Renew this process's heartbeat on the rows of the sockets it holds."""
    pks = held()
    if not pks:
        return 0
    now = now or timezone.now()
    mine = DeviceSession.objects.filter(pk__in=pks)
    # Closed by another host's sweep while our heartbeats could not reach the database: still ours, reopened.
    reopened = mine.filter(ended_at__isnull=False, close_reason=HEARTBEAT_LOST)
    devices = list(reopened.values_list("device_id", flat=True))
    if devices:
        reopened.update(ended_at=None, close_reason="")
        Device.objects.filter(pk__in=devices).update(online=True)
    return mine.filter(ended_at__isnull=True).update(heartbeat_at=now)


def close_orphaned_sessions(period: float, now=None) -> int:
    """Close the open rows whose owner is gone (see the module docstring); returns how many."""
    now = now or timezone.now()
    me = this_process()
    stale = now - timedelta(seconds=STALE_PERIODS * period)
    open_rows = DeviceSession.objects.filter(ended_at__isnull=True)
    orphans: dict[int, str] = {}
    held_now = held()
    # This host's rows first: a dead owner is known for certain, whatever its heartbeat's age.
    owners = open_rows.filter(server_host=me.host).values_list("pk", "server_pid", "server_started_at", "heartbeat_at")
    for pk, pid, started_at, beat in owners:
        if pid == me.pid and abs((started_at or 0) - me.started_at) <= START_TIME_SLACK:
            # Our own row: orphaned only if we no longer hold its socket and it was not just opened.
            if pk not in held_now and beat is not None and beat < now - timedelta(seconds=period):
                orphans[pk] = "socket released without its close written"
        elif not _alive(pid, started_at):
            orphans[pk] = f"server process {pid} gone"
    others = open_rows.exclude(server_host=me.host)
    for pk in others.filter(heartbeat_at__lt=stale).values_list("pk", flat=True):
        orphans[pk] = HEARTBEAT_LOST
    for pk in open_rows.filter(heartbeat_at__isnull=True, started_at__lt=stale).values_list("pk", flat=True):
        orphans.setdefault(pk, HEARTBEAT_LOST)  # rows from before owners were recorded
    closed = 0
    for reason in set(orphans.values()):
        pks = [pk for pk, why in orphans.items() if why == reason]
        closed += DeviceSession.objects.filter(pk__in=pks, ended_at__isnull=True).update(
            ended_at=now, close_reason=reason[:200])
    if orphans:
        open_sessions = DeviceSession.objects.filter(device_id=OuterRef("pk"), ended_at__isnull=True)
        Device.objects.filter(online=True).filter(~Exists(open_sessions)).update(online=False)
        log.warning("closed %d session rows whose server process is gone (%s)", closed,
                    ", ".join(sorted(set(orphans.values()))))
    return closed


def sweep(period: float) -> None:
    """One heartbeat and one sweep; a database error is an outage, logged once, retried next period."""
    db.close_old_connections()
    try:
        heartbeat()
        close_orphaned_sessions(period)
    except (db.OperationalError, db.InterfaceError) as exc:
        database_outage.failed(exc, "session heartbeat")
        db.connections.close_all()
    else:
        database_outage.ok()


_thread: threading.Thread | None = None
_stop = threading.Event()


def start(period: float | None = None) -> None:
    """Run :func:`sweep` now and every ``period`` seconds on a daemon thread (once per process)."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    if period is None:
        from voice.conf import performance_config

        period = performance_config().database.session_heartbeat
    _stop.clear()

    def run():
        while True:
            try:
                sweep(period)
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                log.exception("session heartbeat failed")
            if _stop.wait(period):
                return

    _thread = threading.Thread(target=run, name="session-heartbeat", daemon=True)
    _thread.start()


def stop() -> None:
    _stop.set()
