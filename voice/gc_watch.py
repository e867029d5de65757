"""How long the garbage collector stopped the process: every collection holds the GIL, so a long
one stalls the event loop (and the device audio it paces) and every worker thread at once.

``install`` registers a ``gc.callbacks`` hook that times each collection. The hook may run inside
any allocation, on any thread, even one that holds ``live_stats``' lock, so it takes no lock: it
appends to a bounded deque (atomic in CPython), and ``live_stats.snapshot`` moves what it finds
into the ``gc_pause_ms`` samples (full collections, generation 2) and the ``gc_collections_gen<N>``
counters.
"""
from __future__ import annotations

import collections
import gc
import time

MAX_PENDING = 1024  # collections not yet read by a snapshot (a full collection is rare: seconds apart)

_pending: collections.deque = collections.deque(maxlen=MAX_PENDING)  # (wall time, generation, ms)
_started = 0.0


def _callback(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        _pending.append((time.time(), info.get("generation", 0), (time.perf_counter() - _started) * 1000))


def install() -> None:
    """Time every collection from now on (idempotent)."""
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)


def drain() -> list[tuple[float, int, float]]:
    """The collections timed since the last call: (wall time, generation, ms), oldest first."""
    out = []
    while _pending:
        out.append(_pending.popleft())
    return out
