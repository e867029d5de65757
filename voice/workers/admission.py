"""Admission and occupancy figures shared by every backend of the dispatch seam.

A call is admitted only if ``max_concurrent + queue_size`` calls are not already in the service
and its device (the owner) has fewer than ``per_device`` calls there; otherwise it is refused at
once (ServiceBusy), so the caller can say "busy" instead of waiting. The figures have one shape
whichever backend runs the calls, so monitoring reads them the same way.

Counters are guarded by a threading lock (not asyncio primitives) because one process may run
several event loops (tests) and local calls finish on worker threads.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from voice.conf import ServiceLimits


class ServiceBusy(RuntimeError):
    """The service's queue is full, or the device already has its share of calls: refused at once."""


class ServiceTimeout(TimeoutError):
    """A call (or the first item of a stream) took longer than the service's timeout."""


@dataclass
class Occupancy:
    """What a service holds now (active, queued) and has done (counters): ``Service.occupancy()``."""

    active: int = 0
    queued: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    rejected_per_device: int = 0
    timed_out: int = 0
    wait_seconds: float = 0.0
    run_seconds: float = 0.0

    def as_dict(self, max_concurrent: int) -> dict:
        done = max(self.completed + self.failed, 1)
        return {
            "active": self.active,
            "queued": self.queued,
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "rejected_per_device": self.rejected_per_device,
            "timed_out": self.timed_out,
            "avg_wait_ms": round(1000 * self.wait_seconds / done, 2),
            "avg_run_ms": round(1000 * self.run_seconds / done, 2),
            "utilisation": round(self.active / max_concurrent, 3),
        }


STALL_WINDOW_SECONDS = 60.0  # how long a run of timeouts keeps a service reported as stalled


class Admission:
    """One service's gate and figures in this process."""

    def __init__(self, limits: ServiceLimits):
        self.limits = limits
        self._lock = threading.Lock()
        self._occupancy = Occupancy()
        self._in_service = 0
        self._per_owner: Counter[str] = Counter()
        self._timeouts_in_a_row = 0  # since the last call that completed
        self._last_timeout = 0.0  # monotonic

    def admit(self, owner: str | None = None) -> Ticket:
        limits = self.limits
        with self._lock:
            if self._in_service >= limits.max_concurrent + limits.queue_size:
                self._occupancy.rejected += 1
                raise ServiceBusy(f"{limits.name} service is busy ({self._in_service} calls in service)")
            per_device = limits.per_device
            if owner is not None and per_device is not None and self._per_owner[owner] >= per_device:
                self._occupancy.rejected += 1
                self._occupancy.rejected_per_device += 1
                raise ServiceBusy(f"{limits.name} service: device {owner} already has {per_device} call(s) in service")
            self._in_service += 1
            self._occupancy.queued += 1
            if owner is not None:
                self._per_owner[owner] += 1
        return Ticket(self, owner)

    def count_timeout(self, ticket: Ticket | None = None) -> None:
        """A call's caller gave up on it; the ticket's later completion does not end the stall."""
        if ticket is not None:
            ticket.timed_out = True
        with self._lock:
            self._occupancy.timed_out += 1
            self._timeouts_in_a_row += 1
            self._last_timeout = time.monotonic()

    def health(self, window: float = STALL_WINDOW_SECONDS) -> str:
        """"ok", or why the service looks stalled: its latest calls timed out (within ``window``
        seconds) and none has completed since. ``/health`` reports it, so a hung model or a lost
        worker shows there instead of only in the devices' apologies."""
        with self._lock:
            recent = time.monotonic() - self._last_timeout <= window
            if self._timeouts_in_a_row and recent:
                return f"error: the last {self._timeouts_in_a_row} {self.limits.name} call(s) timed out"
            return "ok"

    def occupancy(self) -> dict:
        with self._lock:
            return self._occupancy.as_dict(self.limits.max_concurrent)


class Ticket:
    """One call's passage through the service: queued -> active -> done, timed on the way."""

    def __init__(self, admission: Admission, owner: str | None):
        self.admission = admission
        self.owner = owner
        self.enqueued = time.monotonic()
        self.started: float | None = None
        self._left = owner is None
        self._finished = False
        self.timed_out = False  # its caller gave up waiting (a late finish is no sign of health)

    def start(self, waited: float | None = None) -> None:
        """The call began running; ``waited`` is its queued time when measured elsewhere (a worker)."""
        self.started = time.monotonic()
        with self.admission._lock:
            if self._finished:
                return
            s = self.admission._occupancy
            s.queued -= 1
            s.active += 1
            s.wait_seconds += max(waited if waited is not None else self.started - self.enqueued, 0.0)

    def leave(self) -> None:
        """The caller stopped waiting: its device may place another call, even while a thread that
        cannot be interrupted still finishes this one (and keeps counting as in service)."""
        with self.admission._lock:
            self._leave_locked()

    def _leave_locked(self) -> None:
        if not self._left:
            self._left = True
            per_owner = self.admission._per_owner
            per_owner[self.owner] -= 1
            if per_owner[self.owner] <= 0:
                del per_owner[self.owner]

    def finish(self, ok: bool) -> None:
        """The call is over (idempotent)."""
        with self.admission._lock:
            if self._finished:
                return
            self._finished = True
            self._leave_locked()
            s = self.admission._occupancy
            if self.started is None:  # never ran (cancelled or timed out while queued)
                s.queued -= 1
            else:
                s.active -= 1
                s.run_seconds += time.monotonic() - self.started
            if ok:
                s.completed += 1
                if not self.timed_out:
                    self.admission._timeouts_in_a_row = 0
            else:
                s.failed += 1
            self.admission._in_service -= 1


class StreamClock:
    """How long a stream's caller waits for its next item, the same on every backend.

    The whole call (queue wait included) has ``timeout``. Once a worker has started the call, the
    first item must come within ``first_token_timeout`` and each later one within
    ``stall_timeout`` of the one before, so a model that stalls ends the turn in seconds (the
    device hears the apology) instead of at the whole-call limit, while a call that merely waited
    its turn in a busy queue is not cut short."""

    def __init__(self, limits: ServiceLimits, now: float, first_item_timeout: float | None = None):
        self.gives_up_at = now + limits.timeout
        self.first_timeout = first_item_timeout or limits.first_token_timeout
        self.stall_timeout = limits.stall_timeout
        self.items = 0
        self._next_by: float | None = None  # set once started
        self._started = False

    def started(self, now: float) -> None:
        self._started = True
        if self.items == 0 and self.first_timeout:
            self._next_by = now + self.first_timeout

    def item(self, now: float) -> None:
        self.items += 1
        self._next_by = now + self.stall_timeout if self.stall_timeout else None

    def limit(self) -> float:
        return self.gives_up_at if self._next_by is None else min(self.gives_up_at, self._next_by)

    def what(self) -> str:
        if self._next_by is None or self._next_by >= self.gives_up_at:
            return "call" if self.items == 0 else "stream"
        return "first result" if self.items == 0 else f"stream (stalled after {self.items} items)"

