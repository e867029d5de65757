"""In-process workers: one FIFO thread pool per voice service.

Admission is decided before queueing: if ``max_concurrent + queue_size`` calls are already in the
service, the next one is refused at once (ServiceBusy), so the caller can say "busy" instead of
waiting forever. The thread pool's own queue is FIFO, so waiting calls run in arrival order.

Counters are guarded by a threading lock (not asyncio primitives) because one process may run
several event loops (tests) and calls finish on worker threads.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from voice.conf import SERVICES, ServiceLimits, service_limits

log = logging.getLogger(__name__)


class ServiceBusy(RuntimeError):
    """The service's queue is full: refused at once."""


class ServiceTimeout(TimeoutError):
    """A call (or the first item of a stream) took longer than the service's timeout."""


@dataclass
class ServiceStats:
    active: int = 0
    queued: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
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
            "timed_out": self.timed_out,
            "avg_wait_ms": round(1000 * self.wait_seconds / done, 2),
            "avg_run_ms": round(1000 * self.run_seconds / done, 2),
            "utilisation": round(self.active / max_concurrent, 3),
        }


class _Admission:
    """One call's passage through the service: queued -> active -> done, timed on the way."""

    def __init__(self, service: LocalService):
        self.service = service
        self.enqueued = time.monotonic()
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        with self.service._lock:
            s = self.service._stats
            s.queued -= 1
            s.active += 1
            s.wait_seconds += self.started - self.enqueued

    def finish(self, ok: bool) -> None:
        with self.service._lock:
            s = self.service._stats
            if self.started is None:  # never ran (cancelled while queued)
                s.queued -= 1
            else:
                s.active -= 1
                s.run_seconds += time.monotonic() - self.started
            if ok:
                s.completed += 1
            else:
                s.failed += 1
            self.service._in_service -= 1


class LocalService:
    def __init__(self, limits: ServiceLimits):
        self.limits = limits
        self.name = limits.name
        self._executor = ThreadPoolExecutor(max_workers=limits.max_concurrent, thread_name_prefix=f"voice-{limits.name}")
        self._lock = threading.Lock()
        self._stats = ServiceStats()
        self._in_service = 0

    # -- admission -----------------------------------------------------------------------------------
    def _admit(self) -> _Admission:
        with self._lock:
            if self._in_service >= self.limits.max_concurrent + self.limits.queue_size:
                self._stats.rejected += 1
                raise ServiceBusy(f"{self.name} service is busy ({self._in_service} calls in service)")
            self._in_service += 1
            self._stats.queued += 1
        return _Admission(self)

    def _run_admitted(self, admission: _Admission, fn: Callable, args: tuple):
        admission.start()
        ok = False
        try:
            result = fn(*args)
            ok = True
            return result
        finally:
            admission.finish(ok)

    def stats(self) -> dict:
        with self._lock:
            return self._stats.as_dict(self.limits.max_concurrent)

    # -- calls -----------------------------------------------------------------------------------------
    async def call(self, fn: Callable, *args, timeout: float | None = None):
        """Run blocking ``fn(*args)`` on this service's threads. A timed-out call keeps its thread
        until it returns (threads cannot be killed) and keeps counting as active meanwhile."""
        admission = self._admit()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._run_admitted, admission, fn, args)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (abort).
            async with asyncio.timeout(timeout or self.limits.timeout):
                return await future
        except TimeoutError:
            self._count_timeout()
            raise ServiceTimeout(f"{self.name} call took longer than {timeout or self.limits.timeout:.1f} s") from None

    async def stream(
        self,
        gen_fn: Callable[..., Iterator],
        *args,
        cancel: threading.Event | None = None,
        first_item_timeout: float | None = None,
        max_buffered: int = 64,
    ) -> AsyncIterator:
        """Iterate blocking generator ``gen_fn(*args)`` on this service's threads, yielding its items
        on the event loop. At most ``max_buffered`` items wait between the thread and the loop; the
        generator is stopped (via ``cancel``) when the consumer stops early or is cancelled."""
        cancel = cancel or threading.Event()
        admission = self._admit()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        room = threading.Semaphore(max_buffered)
        done = object()

        def produce():
            try:
                for item in gen_fn(*args):
                    while not room.acquire(timeout=0.1):
                        if cancel.is_set():
                            return
                    if cancel.is_set():
                        return
                    loop.call_soon_threadsafe(items.put_nowait, (item, None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                loop.call_soon_threadsafe(items.put_nowait, (done, exc))
                raise
            loop.call_soon_threadsafe(items.put_nowait, (done, None))

        producer = loop.run_in_executor(self._executor, self._run_admitted, admission, produce, ())
        producer.add_done_callback(_retrieve)  # errors reach the consumer via the queue
        deadline = loop.time() + self.limits.timeout
        first_deadline = loop.time() + (first_item_timeout or self.limits.first_token_timeout or self.limits.timeout)
        first = True
        try:
            while True:
                limit = min(deadline, first_deadline) if first else deadline
                try:
                    async with asyncio.timeout_at(limit):
                        item, exc = await items.get()
                except TimeoutError:
                    self._count_timeout()
                    what = "first result" if first else "stream"
                    raise ServiceTimeout(f"{self.name} {what} took too long") from None
                if item is done:
                    if exc is not None:
                        raise exc
                    return
                first = False
                room.release()
                yield item
        finally:
            cancel.set()
            # Unblock a producer waiting for room; it sees ``cancel`` and returns.
            room.release()

    def _count_timeout(self) -> None:
        with self._lock:
            self._stats.timed_out += 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _retrieve(future) -> None:
    if not future.cancelled():
        future.exception()


@functools.cache
def services() -> dict[str, LocalService]:
    """The per-process services, built from performance.yaml on first use."""
    return {name: LocalService(service_limits(name)) for name in SERVICES}


async def run_blocking(fn: Callable, *args):
    """For light blocking work that belongs to no model service (e.g. Opus encoding of a sentence)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
