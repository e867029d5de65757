"""A session's uplink packets waiting for the VAD.

Bounded: when full the oldest packet is dropped (a device far behind loses stale audio rather than
the server's memory growing), and every drop is counted. The packets waiting in all sessions are
summed in the ``vad_pending_packets`` gauge, so monitoring and the listening-capacity benchmark see
a backlog building up before anything is dropped.
"""
from __future__ import annotations

import collections

from voice import live_stats


class PacketQueue:
    def __init__(self, maxlen: int):
        self._items: collections.deque[tuple[bytes, float]] = collections.deque(maxlen=maxlen)

    @property
    def maxlen(self) -> int:
        return self._items.maxlen

    def put(self, payload: bytes, arrived: float) -> bool:
        """Queue one packet; False when the queue was full and its oldest packet was dropped."""
        full = len(self._items) == self._items.maxlen
        self._items.append((payload, arrived))
        if full:
            live_stats.incr("audio_dropped")
        else:
            live_stats.gauge_add("vad_pending_packets", 1)
        return not full

    def take_all(self) -> list[tuple[bytes, float]]:
        items = list(self._items)
        self.clear()
        return items

    def clear(self) -> None:
        if self._items:
            live_stats.gauge_add("vad_pending_packets", -len(self._items))
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)
