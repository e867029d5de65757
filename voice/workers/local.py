"""In-process workers (the embedded default): one thread pool per voice service.

Admission (``voice.workers.admission``) is decided before queueing, so a full service refuses at
once. Waiting calls run earliest deadline first (``voice.workers.deadline_executor``); a call
without a deadline is due when it arrives, so such calls run in arrival order. Calls name an
operation (``voice.workers.operations``), exactly as with the Celery backend; ``run`` takes a
plain callable for work bound to per-session state that stays in this process (the VAD).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

from voice.conf import ServiceLimits
from voice.workers import operations
from voice.workers.admission import Admission, ServiceBusy, ServiceTimeout, StreamClock, Ticket
from voice.workers.deadline_executor import DeadlineExecutor

__all__ = ["LocalService", "ServiceBusy", "ServiceTimeout"]

log = logging.getLogger(__name__)


class LocalService:
    """A ``voice.workers.base.Service`` (and ``InProcessService``) on this process's threads."""

    def __init__(self, limits: ServiceLimits):
        self.limits = limits
        self.name = limits.name
        self.admission = Admission(limits)
        self._executor = DeadlineExecutor(limits.max_concurrent, thread_name_prefix=f"voice-{limits.name}")

    @staticmethod
    def _run_admitted(ticket: Ticket, fn: Callable, args: tuple):
        ticket.start()
        ok = False
        try:
            result = fn(*args)
            ok = True
            return result
        finally:
            ticket.finish(ok)

    def _submit(self, ticket: Ticket, fn: Callable, args: tuple, deadline: float | None):
        future = self._executor.submit(self._run_admitted, ticket, fn, args, deadline=deadline)
        # A call cancelled while it waited (abort, timeout) never runs: its place is freed here.
        future.add_done_callback(lambda f: f.cancelled() and ticket.finish(False))
        return future

    def occupancy(self) -> dict:
        return self.admission.occupancy()

    def health(self) -> str:
        return self.admission.health()

    # -- calls -----------------------------------------------------------------------------------------
    async def call(self, operation: str, *args, owner: str | None = None, timeout: float | None = None,
                   deadline: float | None = None):
        """Run the named operation on this service's threads and return its result."""
        op = operations.get(operation)
        if op.streams:
            raise TypeError(f"{operation} is a stream: use stream()")
        return await self.run(op.fn, *args, owner=owner, timeout=timeout, deadline=deadline)

    async def run(self, fn: Callable, *args, owner: str | None = None, timeout: float | None = None,
                  deadline: float | None = None):
        """Run blocking ``fn(*args)`` on this service's threads. A timed-out call keeps its thread
        until it returns (threads cannot be killed) and keeps counting as active meanwhile."""
        ticket = self.admission.admit(owner)
        future = asyncio.wrap_future(self._submit(ticket, fn, args, deadline))
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (abort).
            async with asyncio.timeout(timeout or self.limits.timeout):
                return await future
        except TimeoutError:
            self.admission.count_timeout(ticket)
            raise ServiceTimeout(f"{self.name} call took longer than {timeout or self.limits.timeout:.1f} s") from None
        finally:
            ticket.leave()

    async def stream(
        self,
        operation: str,
        *args,
        owner: str | None = None,
        first_item_timeout: float | None = None,
        max_buffered: int = 64,
        deadline: float | None = None,
    ) -> AsyncIterator:
        """Iterate the named streaming operation on this service's threads, yielding its items on
        the event loop. At most ``max_buffered`` items wait between the thread and the loop; the
        generator is stopped (via its ``cancel`` event) when the consumer stops early or is cancelled.
        ``deadline`` (``time.monotonic()``): when the first item is needed, for the queue's order."""
        op = operations.get(operation)
        if not op.streams:
            raise TypeError(f"{operation} is not a stream: use call()")
        cancel = threading.Event()
        ticket = self.admission.admit(owner)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        room = threading.Semaphore(max_buffered)
        done, started = object(), object()

        def produce():
            loop.call_soon_threadsafe(items.put_nowait, (started, None))
            try:
                for item in op.fn(*args, cancel=cancel):
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

        producer = asyncio.wrap_future(self._submit(ticket, produce, (), deadline))
        producer.add_done_callback(_retrieve)  # errors reach the consumer via the queue
        # (``deadline`` above orders the queue; the clock below bounds how long this caller waits)
        clock = StreamClock(self.limits, loop.time(), first_item_timeout)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(clock.limit()):
                        item, exc = await items.get()
                except TimeoutError:
                    self.admission.count_timeout(ticket)
                    raise ServiceTimeout(f"{self.name} {clock.what()} took too long") from None
                if item is started:
                    clock.started(loop.time())
                    continue
                if item is done:
                    if exc is not None:
                        raise exc
                    return
                clock.item(loop.time())
                room.release()
                yield item
        finally:
            cancel.set()
            ticket.leave()
            # Unblock a producer waiting for room; it sees ``cancel`` and returns.
            room.release()

    def shutdown(self) -> None:
        self._executor.shutdown()


def _retrieve(future) -> None:
    if not future.cancelled():
        future.exception()
