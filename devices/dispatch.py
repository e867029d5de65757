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
from collections.abc import Awaitable, Callable, Sequence


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
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
