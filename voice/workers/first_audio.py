"""First audio before more text: LLM generation in this process waits while a reply's first clause
is being synthesised.

On 2 cores the LLM writing the rest of a reply (llama.cpp, 2 threads) and Piper synthesising its
first clause (onnxruntime, 2 threads) share the CPU, and the first audio came ~4x later than Piper
alone (~0.3 s against ~0.07 s). A device needs ~3 tokens of text a second and the bundled LLM
writes ~60, so pausing generation for the ~0.1 s of a first clause costs the reply nothing and
brings its first audio forward. The turn holds the gate from the first clause's TTS call until its
first frames (``hold``); the LLM stream checks it between tokens (``wait``). A hold counts for at
most ``max_hold`` seconds after it began, so a slow or queued synthesis (many devices at once)
never stops generation for longer. Process-wide and in-process only: with Celery workers the LLM
runs elsewhere and never waits.
"""
from __future__ import annotations

import threading
import time


class Hold:
    """One first clause being synthesised; ``release`` is idempotent."""

    def __init__(self, gate: FirstAudioGate, until: float):
        self._gate = gate
        self.until = until  # time.monotonic() after which it no longer holds anything back
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._leave(self)


class FirstAudioGate:
    def __init__(self, max_hold: float = 0.3, clock=time.monotonic):
        self.max_hold = max_hold
        self._clock = clock
        self._cond = threading.Condition()
        self._holds: set[Hold] = set()
        self.waited = 0  # times generation paused (tests, figures)

    def hold(self) -> Hold:
        hold = Hold(self, self._clock() + self.max_hold)
        if self.max_hold > 0:
            with self._cond:
                self._holds.add(hold)
        return hold

    def _leave(self, hold: Hold) -> None:
        with self._cond:
            self._holds.discard(hold)
            self._cond.notify_all()

    def holding(self) -> bool:
        """A first clause is being synthesised (and has not exceeded ``max_hold``)."""
        with self._cond:
            return self._last_until() > self._clock()

    def _last_until(self) -> float:
        return max((h.until for h in self._holds), default=0.0)

    def wait(self, cancel: threading.Event | None = None) -> None:
        """Called by generation between tokens (on its worker thread): pause while a first clause
        is being synthesised."""
        if not self._holds:
            return
        with self._cond:
            counted = False
            while (remaining := self._last_until() - self._clock()) > 0 and not (cancel is not None and cancel.is_set()):
                if not counted:
                    self.waited, counted = self.waited + 1, True
                self._cond.wait(timeout=min(remaining, 0.05))  # re-check the cancel event now and then


_gate: FirstAudioGate | None = None


def gate() -> FirstAudioGate:
    """The process's gate, sized by XIAOZHI_FIRST_AUDIO_HOLD_MS (0: generation never waits)."""
    global _gate
    if _gate is None:
        from django.conf import settings

        _gate = FirstAudioGate(settings.XIAOZHI_FIRST_AUDIO_HOLD_MS / 1000)
    return _gate
