"""A thread pool that runs the waiting call with the earliest deadline first.

Why not ``ThreadPoolExecutor``: its queue is FIFO, and for speech FIFO is wrong once several
answers play at once. A device whose next sentence is needed in 0.3 s (its playout is about to run
dry) should not wait behind a sentence of a device with 3 s of audio still buffered. Callers pass a
deadline (``time.monotonic()`` seconds: when the result is needed); a call without one gets its
submission time, so calls without deadlines run in arrival order, and a first sentence (someone is
waiting for it now) goes before sentences that are not yet needed. Equal deadlines keep arrival order.
The heap holds only admitted calls, so the service's admission (max_concurrent + queue_size) bounds it.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future


FIRST = 0.0  # a deadline before any other: the call runs next (someone is waiting for it now)


class DeadlineExecutor:
    def __init__(self, max_workers: int, thread_name_prefix: str):
        self._heap: list = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        for i in range(max_workers):
            threading.Thread(target=self._work, name=f"{thread_name_prefix}_{i}", daemon=True).start()

    def submit(self, fn: Callable, *args, deadline: float | None = None) -> Future:
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("executor is shut down")
            key = time.monotonic() if deadline is None else deadline
            heapq.heappush(self._heap, (key, next(self._order), future, fn, args))
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._heap and not self._closed:
                    self._ready.wait()
                if not self._heap:
                    return
                _key, _n, future, fn, args = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up while it waited
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel every waiting call; running calls finish, then the threads end."""
        with self._ready:
            self._closed = True
            waiting, self._heap = self._heap, []
            self._ready.notify_all()
        for _key, _n, future, _fn, _args in waiting:
            future.cancel()
