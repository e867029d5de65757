"""A fixed set of model instances shared by every session of the process.

Most inference engines are not safe to call from two threads at once, and loading one instance
per connection would multiply memory and load time by the number of devices. A small pool, built
once, bounds both.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class PoolTimeout(TimeoutError):
    """Every instance stayed busy for longer than the caller was willing to wait."""


class ModelPool(Generic[T]):
    def __init__(self, factory: Callable[[], T], size: int, acquire_timeout: float = 10.0, name: str = "model"):
        if size < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        self.name = name
        self.size = size
        self.acquire_timeout = acquire_timeout
        # Built eagerly: a missing weight file fails at start-up, not on the first request.
        self.instances: tuple[T, ...] = tuple(factory() for _ in range(size))
        # Last in, first out: the most recently used instance has the warmest caches
        # (e.g. an LLM's evaluated prompt prefix).
        self._idle: queue.LifoQueue[T] = queue.LifoQueue()
        for instance in self.instances:
            self._idle.put(instance)
        # One ``borrow_all`` collects at a time: two collecting at once could each hold part of the
        # pool and wait for the rest until the timeout (seen as 4 s stalls of every tool decision
        # when five devices connected at once with two router contexts).
        self._collecting = threading.Lock()

    @property
    def available(self) -> int:
        return self._idle.qsize()

    @contextmanager
    def borrow(self, timeout: float | None = None) -> Iterator[T]:
        wait = self.acquire_timeout if timeout is None else timeout
        try:
            instance = self._idle.get(timeout=wait)
        except queue.Empty:
            raise PoolTimeout(f"no {self.name} instance became free within {wait:g} s (pool size {self.size})") from None
        try:
            yield instance
        finally:
            self._idle.put(instance)

    @contextmanager
    def borrow_all(self, timeout: float | None = None) -> Iterator[tuple[T, ...]]:
        """Every instance at once, e.g. to warm each one without racing live requests."""
        wait = self.acquire_timeout if timeout is None else timeout
        if not self._collecting.acquire(timeout=wait):
            raise PoolTimeout(f"another caller kept collecting every {self.name} instance for {wait:g} s")
        with ExitStack() as stack:
            try:
                instances = tuple(stack.enter_context(self.borrow(timeout)) for _ in range(self.size))
            finally:
                self._collecting.release()  # collected (or failed): the next collector may start
            yield instances

    def retire(self, timeout: float = 2.0) -> tuple[T, ...]:
        """Take every instance that is idle or becomes idle within ``timeout`` seconds, for good (to
        free them at exit). One still busy after that is left to its thread: freeing a model under
        a running call crashes the process (a llama.cpp context freed at exit while a worker thread
        still evaluated a prompt on it ended test runs with a segfault)."""
        retired: list[T] = []
        deadline = time.monotonic() + timeout
        while len(retired) < self.size:
            try:
                retired.append(self._idle.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return tuple(retired)
