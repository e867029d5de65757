"""A fixed set of model instances shared by every session of the process.

Most inference engines are not safe to call from two threads at once, and loading one instance
per connection would multiply memory and load time by the number of devices. A small pool, built
once, bounds both.
"""
from __future__ import annotations

import queue
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
        with ExitStack() as stack:
            yield tuple(stack.enter_context(self.borrow(timeout)) for _ in range(self.size))
