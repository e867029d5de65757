"""A circuit breaker for a remote service, one per provider instance.

When a hosted LLM (or ASR, TTS) is down, every turn would otherwise wait for its connect timeout and retries
before apologising, and every waiting turn holds an LLM worker slot. After ``failure_threshold``
consecutive failed requests the breaker *opens*: requests fail at once with ``CircuitOpen``. After
``cooldown`` seconds it lets one probe request through (*half-open*); its success closes the
breaker, its failure opens it for another cool-down. Thread-safe: worker threads share it.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from voice import live_stats
from voice.providers.errors import CircuitOpen

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        stats: str = "llm",
    ):
        """``stats``: the prefix of the live-stats counters (``<stats>_breaker_opened``, ``_rejected``)."""
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        self.name = name
        self.stats = stats
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0  # consecutive
        self._opened_at = 0.0
        self._probe_out = False  # half-open lets exactly one request through at a time
        self.times_opened = 0
        self.rejected = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._current_state()

    def _current_state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._state = HALF_OPEN
            self._probe_out = False
        return self._state

    def before_request(self) -> None:
        """Raise ``CircuitOpen`` if the request must not be sent; otherwise let it go (as the
        probe, when half-open)."""
        with self._lock:
            state = self._current_state()
            if state == CLOSED:
                return
            if state == HALF_OPEN and not self._probe_out:
                self._probe_out = True
                return
            self.rejected += 1
            if state == OPEN:
                wait = max(0.0, self.cooldown - (self._clock() - self._opened_at))
                detail = f"retrying in {wait:.1f} s"
            else:
                detail = "a probe request is in flight"
        live_stats.incr(f"{self.stats}_breaker_rejected")
        raise CircuitOpen(
            f"{self.name} is failing ({self.failure_threshold} failures in a row): circuit open, {detail}"
        )

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._state = CLOSED
            self._probe_out = False

    def record_abandoned(self) -> None:
        """The caller gave up before learning anything about the service (an aborted turn):
        free the half-open probe slot without judging the service."""
        with self._lock:
            self._probe_out = False

    def record_failure(self) -> None:
        opened = False
        with self._lock:
            self._failures += 1
            state = self._current_state()
            if state == HALF_OPEN or (state == CLOSED and self._failures >= self.failure_threshold):
                self._state = OPEN
                self._opened_at = self._clock()
                self._probe_out = False
                self.times_opened += 1
                opened = True
        if opened:
            live_stats.incr(f"{self.stats}_breaker_opened")

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "state": self._current_state(),
                "consecutive_failures": self._failures,
                "times_opened": self.times_opened,
                "rejected": self.rejected,
            }
