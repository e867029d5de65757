"""One warning per outage of a backing service (the database, the channel layer), not one per failed call.

A Redis or MySQL restart makes every connected device's next call fail at once: a hundred identical
tracebacks say less than one line saying the service is gone and one saying when it came back.
Each failure is still counted (``<name>_errors`` in voice.live_stats), each outage too (``<name>_outages``).
"""
from __future__ import annotations

import logging
import threading
import time

from voice import live_stats

log = logging.getLogger(__name__)


class Outage:
    def __init__(self, name: str, what: str):
        self.name, self.what = name, what
        self._lock = threading.Lock()
        self._since: float | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, doing: str) -> None:
        live_stats.incr(f"{self.name}_errors")
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        live_stats.incr(f"{self.name}_outages")
        log.warning("%s unreachable (%s: %s: %s); retrying until it returns", self.what, doing,
                    type(exc).__name__, exc)

    def ok(self) -> None:
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("%s is back after %.1f s", self.what, time.monotonic() - since)


database = Outage("database", "the database")
channel_layer = Outage("channel_layer", "the channel layer (Redis)")
