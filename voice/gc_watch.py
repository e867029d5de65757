"""How long the garbage collector stopped the process: every collection holds the GIL, so a long
one stalls the event loop (and the device audio it paces) and every worker thread at once.

``install`` registers a ``gc.callbacks`` hook that counts every collection and times the full ones
(generation 2). The hook may run inside any allocation, on any thread, even one that holds
``live_stats``' lock, so it takes no lock: collections never overlap (they hold the GIL), so it
bumps plain counters and appends full collections to a bounded deque (atomic in CPython).
``live_stats.snapshot`` moves what is new into the ``gc_collections_gen<N>`` counters and the
``gc_pause_ms`` samples (``drain``).
"""
from __future__ import annotations

import collections
import gc
import threading
import time

MAX_PENDING = 256  # full collections not yet read by a snapshot (they come seconds apart)

_counts = [0, 0, 0]  # collections per generation since install (only the hook writes them)
_pending: collections.deque = collections.deque(maxlen=MAX_PENDING)  # (wall time, ms) of full collections
_started = 0.0
_drained = [0, 0, 0]  # the counts the last drain reported
_drain_lock = threading.Lock()  # between readers (a snapshot on the scheduler and one in a view); never the hook's


def _callback(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    generation = min(max(int(info.get("generation", 0)), 0), 2)
    _counts[generation] += 1
    if generation == 2:
        _pending.append((time.time(), (time.perf_counter() - _started) * 1000))


def install() -> None:
    """Count and time every collection from now on (idempotent)."""
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)


def drain() -> tuple[list[int], list[tuple[float, float]]]:
    """What happened since the last call: collections per generation, and (wall time, ms) of each
    full collection, oldest first."""
    with _drain_lock:
        counts = list(_counts)
        new = [now - before for now, before in zip(counts, _drained)]
        _drained[:] = counts
        pauses = []
        while True:
            try:
                pauses.append(_pending.popleft())
            except IndexError:
                break
    return new, pauses
