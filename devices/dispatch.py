"""The consumer's message loop: every message of its sources handed to ``dispatch``, one at a time.

Channels' ``await_many_dispatch`` does the same with a fresh task per message and an
``asyncio.wait`` over every source each time. For a device that is ~17 audio frames a second, and
at hundreds of listening devices that bookkeeping was a large share of the event loop's time per
frame, the loop being what limits how many devices one process can listen to. Here each source has
one long-lived pump that awaits its messages directly; a lock keeps dispatch serial, as in Channels
(a handler never runs beside another of the same consumer), and costs nothing when uncontended.
A pump blocks while its message is being dispatched, so a slow handler still back-pressures the
socket as before (nothing is read ahead into an unbounded buffer).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

RECANCEL_EVERY = 0.05  # s between cancels of a pump that has not stopped
RECANCEL_FOR = 5.0  # s; after that a pump that ignores cancels is left (and logged)


async def dispatch_each(sources: Sequence[Callable[[], Awaitable[dict]]],
                        dispatch: Callable[[dict], Awaitable[None]]) -> None:
    """Until a dispatch (or a source) raises, e.g. ``StopConsumer``: that exception is raised here,
    after every pump has been stopped."""
    turn = asyncio.Lock()

    async def pump(source) -> None:
        while True:
            message = await source()
            async with turn:
                await dispatch(message)

    pumps = [asyncio.ensure_future(pump(source)) for source in sources]
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            finished.result()  # a pump only ends by raising: re-raise it here
    finally:
        await stop_all(pumps)


async def stop_all(tasks: Sequence[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that lost its
    cancellation (see the module's docstring); bounded by ``RECANCEL_FOR``."""
    running = [task for task in tasks if not task.done()]
    loop = asyncio.get_running_loop()
    give_up = loop.time() + RECANCEL_FOR
    while running:
        for task in running:
            task.cancel()
        try:
            await asyncio.wait(running, timeout=RECANCEL_EVERY)
        except asyncio.CancelledError:  # we are cancelled ourselves: the pumps are, too, once more
            for task in running:
                task.cancel()
            raise
        running = [task for task in running if not task.done()]
        if running and loop.time() >= give_up:
            log.error("%d task(s) did not stop after %.0f s of cancels: %s", len(running), RECANCEL_FOR, running)
            break
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a pump's own error is raised by dispatch_each, not logged as lost
