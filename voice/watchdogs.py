"""The two clocks that close a session nobody uses: no hello in time, and no voice for too long.

Kept out of the session so it only routes: each watchdog is one coroutine the session owns as a
task, reading the session through two small callables and closing it through a third.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from voice.protocol import CloseCode

CloseSocket = Callable[[int, str], Awaitable[None]]


async def watch_hello(timeout: float, greeted: Callable[[], bool], close: CloseSocket) -> None:
    """Close with 4408 unless the device has said hello within ``timeout`` seconds."""
    await asyncio.sleep(timeout)
    if not greeted():
        await close(CloseCode.HELLO_TIMEOUT, "no hello")


class IdleWatch:
    """Closes a session with 4000 after ``idle_timeout`` seconds without voice or turn control
    (never while it thinks or speaks), and an unbound device's session after
    ``unbound_session_seconds`` whatever it does."""

    def __init__(self, idle_timeout: float, *, activated: bool = True, unbound_session_seconds: float = 180.0):
        self.activated = activated
        self.unbound_session_seconds = unbound_session_seconds
        self.limit = idle_timeout if activated else min(idle_timeout, unbound_session_seconds)
        self.started = self.last_activity = time.monotonic()

    def touch(self) -> None:
        """The user did something (spoke, pressed, said hello)."""
        self.last_activity = time.monotonic()

    async def run(self, busy: Callable[[], bool], close: CloseSocket) -> None:
        while True:
            now = time.monotonic()
            if not self.activated and now - self.started >= self.unbound_session_seconds:
                await close(CloseCode.IDLE, "unbound session limit")
                return
            is_busy = busy()
            quiet_for = now - self.last_activity
            if not is_busy and quiet_for >= self.limit:
                await close(CloseCode.IDLE, f"no voice for {self.limit:.0f} s")
                return
            await asyncio.sleep(max(min(self.limit - quiet_for, 5.0), 0.2) if not is_busy else 1.0)
