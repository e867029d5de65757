"""The garbage collector's pauses are timed and counted (voice/gc_watch.py), without a lock in the
collector's hook, and start-up's objects are frozen out of full collections (xiaozhi/asgi.py)."""
import gc
import threading

from voice import gc_watch, live_stats


def test_a_full_collection_is_counted_and_its_pause_sampled():
    gc_watch.install()
    gc_watch.install()  # idempotent: one hook
    assert gc.callbacks.count(gc_watch._callback) == 1
    before = live_stats.snapshot()
    gc.collect()  # a full collection (generation 2)
    after = live_stats.snapshot()
    # at least this one (an automatic one may come too)
    assert after["counters"]["gc_collections_gen2"] >= before["counters"].get("gc_collections_gen2", 0) + 1
    pauses = after["latency_ms"]["gc_pause_ms"]
    assert pauses["count"] >= 1 and pauses["p50"] >= 0


def test_the_hook_takes_no_lock_so_a_collection_inside_live_stats_cannot_deadlock():
    gc_watch.install()
    done = threading.Event()

    def collect_while_holding_the_lock():
        with live_stats._lock:  # as if the collector ran inside an allocation in live_stats
            gc.collect()
        done.set()

    threading.Thread(target=collect_while_holding_the_lock, daemon=True).start()
    assert done.wait(10), "the collector's hook waited for live_stats' lock"
    assert live_stats.snapshot()["counters"]["gc_collections_gen2"] >= 1


def test_only_full_collections_are_kept_for_their_pause_and_those_are_bounded():
    gc_watch.drain()
    for generation in (0, 1, 0):
        gc_watch._callback("start", {"generation": generation})
        gc_watch._callback("stop", {"generation": generation})
    counts, pauses = gc_watch.drain()
    assert counts[0] >= 2 and counts[1] >= 1
    assert all(ms >= 0 for _, ms in pauses)  # only real full collections' (one may have come meanwhile)
    for _ in range(gc_watch.MAX_PENDING + 10):
        gc_watch._callback("start", {"generation": 2})
        gc_watch._callback("stop", {"generation": 2})
    counts, pauses = gc_watch.drain()
    assert len(pauses) == gc_watch.MAX_PENDING and counts[2] >= gc_watch.MAX_PENDING + 10
    assert gc_watch.drain()[1] == []  # read once


def test_serving_freezes_what_start_up_made(settings):
    assert settings.XIAOZHI_GC_FREEZE
    import xiaozhi.asgi  # noqa: F401  (the module Daphne serves; freezes when imported)

    assert gc.get_freeze_count() > 0
