"""Live figures of this process's voice side, read by monitoring (snapshots, /metrics, the JSON API).

Plain counters and bounded sample windows under one lock: cheap enough to touch on every frame.
Each process keeps its own; monitoring combines processes (through Redis when configured).
"""
from __future__ import annotations

import collections
import threading
import time

from voice import gc_watch
from voice.percentile import percentiles
from voice.pipeline.turn_row import TurnRow

SAMPLE_WINDOW = 1000  # latest samples kept per latency figure

# The error a turn cut short by its user carries (barge-in, an ``abort`` message): counted as an abort,
# never as a turn error, so ordinary interruptions do not raise the error-rate alert.
ABORTED = "aborted"
# Gauges count live things (sockets, turns, queued packets): only their owners move them, and a
# figures reset leaves them, or they would read 0 with devices connected and go negative when they leave.
LIVE_GAUGES = ("connected_devices", "active_turns", "vad_pending_packets", "database_writes_pending")

_lock = threading.Lock()
_counters: collections.Counter = collections.Counter()
# vad_pending_packets: uplink packets queued for the VAD in all sessions (voice/pipeline/packet_queue.py);
# database_writes_pending: turn records and session closes waiting for the database (devices/pending_writes.py).
_gauges: dict[str, float] = dict.fromkeys(LIVE_GAUGES, 0)
_samples: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=SAMPLE_WINDOW))
_turn_times: collections.deque = collections.deque(maxlen=10000)  # monotonic end times, for turns/minute


# Listening figures (read by benchmarks/listening_capacity.py as well as monitoring):
#   counters vad_packets (heard), audio_dropped (queue full), audio_lost (VAD busy/failed),
#   vad_chunks and vad_model_runs (chunks per run = the VAD's batch size), vad_batch_cycles and
#   vad_batch_sessions (cross-session batching); sample vad_lag_ms: a packet batch's oldest packet,
#   from its arrival to the end of its VAD processing. What listening under load saves or sheds:
#   vad_gated_packets (decoded, too quiet for Silero: energy_gate.py), vad_shed_packets (a noise-only
#   session's stale packets left undecoded under overload: vad_batcher.py), and audio_dropped_hot /
#   audio_lost_hot (the part of audio_dropped / audio_lost that belonged to a session with speech in
#   progress or just heard: what must stay 0).
# The garbage collector (voice/gc_watch.py): sample gc_pause_ms (each full collection: the process stood
#   still that long), counters gc_collections_gen0/1/2.


def incr(name: str, amount: float = 1) -> None:
    with _lock:
        _counters[name] += amount


def gauge_add(name: str, delta: float) -> None:
    with _lock:
        _gauges[name] = _gauges.get(name, 0) + delta


def observe(name: str, value_ms: float) -> None:
    with _lock:
        _samples[name].append((time.time(), value_ms))


def turn_finished(row: TurnRow) -> None:
    """Record one finished turn's stage marks (ms after end of speech) and its outcome: an error
    (``turn_errors`` and ``errors:<stage>``) or an abort by its user (``turn_aborts``)."""
    with _lock:
        _turn_times.append(time.monotonic())
        _counters["turns"] += 1
        if row.error == ABORTED:
            _counters["turn_aborts"] += 1
        elif row.error:
            _counters["turn_errors"] += 1
            _counters[f"errors:{row.error.split(':')[0]}"] += 1
        for key, value in row.latencies().items():
            _samples[key].append((time.time(), value))


def snapshot(window_seconds: float = 300.0) -> dict:
    """Counters, gauges, turns per minute and latency percentiles over the last ``window_seconds``."""
    now_wall, now = time.time(), time.monotonic()
    collected, full_pauses = gc_watch.drain()  # taken outside the lock: the collector's hook never takes it
    with _lock:
        for generation, count in enumerate(collected):
            if count:
                _counters[f"gc_collections_gen{generation}"] += count
        for at, ms in full_pauses:
            _samples["gc_pause_ms"].append((at, ms))
        counters = dict(_counters)
        gauges = dict(_gauges)
        recent = {name: [v for t, v in samples if now_wall - t <= window_seconds] for name, samples in _samples.items()}
        turns_last_minute = sum(1 for t in _turn_times if now - t <= 60)
    return {
        "counters": counters,
        "gauges": gauges,
        "turns_per_minute": turns_last_minute,
        "latency_ms": {name: {"count": len(v), **percentiles(v)} for name, v in recent.items()},
    }


def reset() -> None:
    """Start the counters and latency samples afresh (``POST /api/performance/reset/``). The gauges
    stay: they count what is live now, and their owners take back exactly what they added."""
    with _lock:
        _counters.clear()
        _samples.clear()
        _turn_times.clear()


def clear() -> None:
    """Everything back to a fresh process, gauges included: for test isolation only, where no
    connection outlives the test that opened it."""
    with _lock:
        _counters.clear()
        _samples.clear()
        _turn_times.clear()
        for key in list(_gauges):
            _gauges[key] = 0
