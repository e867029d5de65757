"""Database writes that must not be lost when MySQL is away or their caller is cancelled: turn records
and session closes.

``write`` tries once on the caller's loop (the usual case, so a test reading the row right after a
disconnect finds it written); a write that fails with a database error, or whose caller is cancelled
(Daphne kills a consumer 10 s after its client left), goes to this process's buffer. One thread owns
the buffer and retries its head with backoff (0.5 s doubling to 5 s) until the database answers,
then writes the rest in order. ``submit`` hands a write straight to the buffer, from code that must
not await (a ``finally`` of a cancelled task).

The buffer holds performance.yaml's ``database.pending_writes``; past that the oldest turn record is
dropped (session closes are kept: the heartbeat sweep of devices/session_owner.py would close their
rows anyway, but later). Figures: ``database_writes_pending`` (gauge), ``database_writes_retried``,
``database_writes_dropped``, ``database_writes_failed`` (a write the database refused, e.g. its
device was deleted: logged and dropped, a retry would fail the same way).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from channels.db import database_sync_to_async
from django import db

from devices.outages import database as database_outage
from voice import live_stats

log = logging.getLogger(__name__)

TURN, SESSION_CLOSE = "turn record", "session close"
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0
# What "the database is away" looks like (mysqlclient: OperationalError 2002/2003/2006/2013, InterfaceError 0).
TRANSIENT = (db.OperationalError, db.InterfaceError)


@dataclass
class PendingWrite:
    kind: str  # TURN or SESSION_CLOSE
    run: Callable[[], object]  # a synchronous ORM call
    what: str  # for the log: which device, which session
    done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def once(self) -> None:
        """Run unless already written. A cancelled caller's call may still be running in the database
        thread when the buffer retries it: the retry waits for it and writes no second turn record."""
        with self._lock:
            if not self.done:
                self.run()
                self.done = True


class PendingWrites:
    def __init__(self, capacity: int | None = None):
        self._capacity = capacity
        self._items: collections.deque[PendingWrite] = collections.deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def capacity(self) -> int:
        if self._capacity is None:
            from voice.conf import performance_config

            self._capacity = performance_config().database.pending_writes
        return self._capacity

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    async def write(self, item: PendingWrite) -> bool:
        """Write now; on a database error or a cancellation, leave it to the buffer. True if written now."""
        try:
            await database_sync_to_async(item.once)()
        except asyncio.CancelledError:
            self.submit(item)
            raise
        except TRANSIENT as exc:
            database_outage.failed(exc, item.kind)
            self.submit(item)
            return False
        except Exception:  # noqa: BLE001 - refused for good (e.g. its device was deleted): said once, here
            live_stats.incr("database_writes_failed")
            log.exception("a %s (%s) was refused by the database and is dropped", item.kind, item.what)
            return False
        database_outage.ok()
        return True

    def submit(self, item: PendingWrite) -> None:
        """Queue for the writer thread; never blocks, never raises (callable from any finally)."""
        with self._lock:
            if len(self._items) >= self.capacity:
                dropped = self._drop_oldest_turn()
                if dropped is None:  # only session closes: the newest one waits for the sweep instead
                    live_stats.incr("database_writes_dropped")
                    log.warning("pending database writes full (%d): %s %s dropped", self.capacity, item.kind, item.what)
                    return
            self._items.append(item)
            live_stats.gauge_add("database_writes_pending", 1)
            self._ensure_thread()
            self._lock.notify()

    def _drop_oldest_turn(self) -> PendingWrite | None:
        for i, queued in enumerate(self._items):
            if queued.kind == TURN:
                del self._items[i]
                live_stats.gauge_add("database_writes_pending", -1)
                live_stats.incr("database_writes_dropped")
                log.warning("pending database writes full (%d, database.pending_writes): the oldest turn record "
                            "(%s) dropped", self.capacity, queued.what)
                return queued
        return None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="pending-db-writes", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            with self._lock:
                while not self._items:
                    self._lock.wait()
                item = self._items[0]
            db.close_old_connections()  # a connection broken by the outage is replaced, not reused
            try:
                item.once()
            except TRANSIENT as exc:
                database_outage.failed(exc, f"retrying a {item.kind}")
                live_stats.incr("database_writes_retried")
                db.connections.close_all()
                time.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            except Exception:  # noqa: BLE001 - refused for good: a retry fails the same way
                live_stats.incr("database_writes_failed")
                log.exception("a pending %s (%s) was refused by the database and is dropped", item.kind, item.what)
            else:
                database_outage.ok()
            backoff = BACKOFF_FIRST
            with self._lock:
                if self._items and self._items[0] is item:
                    self._items.popleft()
                    live_stats.gauge_add("database_writes_pending", -1)


pending = PendingWrites()
