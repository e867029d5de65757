"""Several replies on few llama.cpp contexts, a clause at a time, earliest deadline first.

A device needs about 3 tokens of text a second to keep speaking; the bundled model writes ~80 on
2 cores. Written one whole reply after another, five answers asked together left the fifth device
silent for the four replies before it (~5-9 s with 80-token answers). Here replies take turns on
the contexts instead: at the end of each clause (where the turn's ``SentenceSplitter`` cuts a piece
to speak: the provider runs one on its own words) a reply gives its context up if another one
waiting is due sooner than its own next clause.

What a reply is due by:

* its first clause: ``FIRST_CLAUSE_WAIT`` after it asked, so newcomers are served within about a
  second, before replies that are already speaking and still have audio to play;
* its next clause: shortly before the device runs out of what was written so far, estimated from
  the words written since its first clause (``WORD_SECONDS`` each, the bundled voice's pace), less
  ``NEXT_CLAUSE_SECONDS`` to write and synthesise that clause;
* background work (prefill, warm-up, a memory summary): never; it runs when no reply waits, and a
  prefill gives up after ``TURN_TIMEOUT``.

A reply alone never gives its context up, so one device pays nothing for this. Taking a context
back costs re-evaluating the reply's own words after the shared system prompt (llama.cpp keeps the
longest common prefix): ~0.1 s for a question and a sentence on 2 cores.

Every llama.cpp call of the provider takes a turn here, so at most ``slots`` computations share the
cores at once whatever the service's thread count. A reply waiting for its turn yields its consumer
heartbeats (``wait``), so the service's stall clock sees it alive.
"""
from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager

from voice.pipeline.sentences import word_count

NEVER = math.inf  # the due time of background work

FIRST_CLAUSE_WAIT = 1.0  # seconds after its call a reply's first clause is due
WORD_SECONDS = 0.3  # how long the device plays one written word at least (the bundled voice: 1.8 s for a
                    # 6-word first clause; ~0.4 a word over whole answers, with the pauses between sentences)
SPEAKING_DELAY = 0.3  # from a first clause written to its first audio on the device (TTS)
# To write and synthesise the next clause before the device runs dry. A trade: larger protects the
# replies already speaking (fewer gaps after their first clause), smaller serves newcomers sooner;
# on 2 cores with five long answers at once, 0.8 s with newcomers due after 1.0 s kept the fifth
# first audio near 1.5 s (1.2 / 1.5 s: ~3 s), at a gap of 0.4-1.5 s after each first clause
# (benchmarks/README.md, "Long answers taking turns").
NEXT_CLAUSE_SECONDS = 0.8
HEARTBEAT_SECONDS = 1.0  # how often a waiting reply tells its consumer it is alive
TURN_TIMEOUT = 10.0  # how long background work waits for a turn before it is given up


class TurnTimeout(Exception):
    pass


class Schedule:
    """One reply's deadlines (``time.monotonic()``), from when it asked and what it has written."""

    def __init__(self, asked: float | None = None, background: bool = False):
        """``background``: nobody waits for this text (a memory summary): due never."""
        self.asked = time.monotonic() if asked is None else asked
        self.background = background
        self.speaking_from: float | None = None  # when its first clause was written (+ TTS)
        self.words = 0.0  # written since, the first clause included

    @property
    def first_due(self) -> float:
        return NEVER if self.background else self.asked + FIRST_CLAUSE_WAIT

    def wrote(self, text: str, now: float | None = None) -> None:
        if self.speaking_from is None:
            self.speaking_from = (time.monotonic() if now is None else now) + SPEAKING_DELAY
        self.words += word_count(text)

    @property
    def next_due(self) -> float:
        """When the next clause is due: before the device has played everything written."""
        if self.speaking_from is None or self.background:
            return self.first_due
        return self.speaking_from + self.words * WORD_SECONDS - NEXT_CLAUSE_SECONDS


class Turns:
    """``slots`` turns (one per context) handed out earliest due first, then by arrival; thread-safe."""

    def __init__(self, slots: int = 1):
        if slots < 1:
            raise ValueError(f"at least one slot, got {slots}")
        self._free = slots
        self._cond = threading.Condition()
        self._waiting: list[tuple[float, int]] = []  # heap of (due, ticket)
        self._tickets = itertools.count()
        self.handovers = 0  # turns given up to a waiting reply (for tests and stats)

    def wait(self, due: float, cancel: threading.Event | None = None, beat=None) -> Generator[object, None, bool]:
        """``holding = yield from turns.wait(...)``: yields ``beat`` every ``HEARTBEAT_SECONDS``
        while others hold every slot; returns True holding a turn, False (holding none) once
        ``cancel`` is set. Closing it early gives up the place in the queue."""
        key = (due, next(self._tickets))
        with self._cond:
            heapq.heappush(self._waiting, key)
        taken = False
        last = time.monotonic()
        try:
            while True:
                with self._cond:
                    while True:
                        if cancel is not None and cancel.is_set():
                            return False  # (a cancel wakes nobody: seen at the next wake-up or heartbeat)
                        if self._free and self._waiting[0] == key:
                            heapq.heappop(self._waiting)
                            self._free -= 1
                            taken = True
                            self._cond.notify_all()  # the next in line may have a free slot too
                            return True
                        remaining = HEARTBEAT_SECONDS - (time.monotonic() - last)
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                last = time.monotonic()
                yield beat
        finally:
            if not taken:
                with self._cond:
                    if key in self._waiting:
                        self._waiting.remove(key)
                        heapq.heapify(self._waiting)
                    self._cond.notify_all()

    def release(self, handed_over: bool = False) -> None:
        """``handed_over``: given up mid-reply because another waits (counted in ``handovers``)."""
        with self._cond:
            self._free += 1
            self.handovers += handed_over
            self._cond.notify_all()

    def wanted(self, due: float) -> bool:
        """Whether a waiting reply is due before ``due`` (background work never is)."""
        with self._cond:
            return bool(self._waiting) and self._waiting[0][0] < due

    @contextmanager
    def turn(self, due: float = NEVER, timeout: float = TURN_TIMEOUT) -> Iterator[None]:
        """Hold a turn for a call that cannot yield heartbeats (a prefill, a warm-up); ``TurnTimeout``
        if none comes within ``timeout`` (checked at each heartbeat; such work is worth doing only while
        the model is idle)."""
        started = time.monotonic()
        waiting = self.wait(due)
        for _ in waiting:  # a heartbeat each HEARTBEAT_SECONDS: the time to check the clock
            if time.monotonic() - started >= timeout:
                waiting.close()  # gives the place up
                raise TurnTimeout(f"no turn on the model within {timeout:g} s: replies kept it busy")
        try:
            yield
        finally:
            self.release()
