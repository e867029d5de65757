"""Probe operations and a probe LLM for the seam tests, registered in the test process and (with
``-I voice.tests.probe_operations``) in the test's Celery worker. They block, fail or report
progress on demand, through files both processes can see; they never stand in for a real model
in a test about the models."""
import threading
import time
from pathlib import Path

from voice.providers import registry
from voice.workers.operations import operation

PROBE_LLM = "probe-silent"


@operation("probe.wait_for_file")
def wait_for_file(path: str, limit: float = 30.0) -> str:
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        if time.monotonic() > deadline:
            return "gave up"
        time.sleep(0.01)
    return "released"


@operation("probe.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@operation("probe.append")
def append(path: str, value: int, delay: float) -> int:
    time.sleep(delay)
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


@operation("probe.numbers", streams=True)
def numbers(count: int, delay: float, progress: str, *, cancel: threading.Event):
    """Yields 0..count-1, writing how far it got to ``progress``, and "stopped" when it ends."""
    produced = 0
    try:
        for i in range(count):
            if cancel.is_set():
                return
            time.sleep(delay)
            produced += 1
            Path(progress).write_text(str(produced))
            yield i
    finally:
        Path(progress).write_text(f"{produced} stopped")


@operation("probe.broken", streams=True)
def broken(*, cancel: threading.Event):
    yield "first"
    raise RuntimeError("model fell over")


@operation("probe.late", streams=True)
def late(seconds: float, *, cancel: threading.Event):
    cancel.wait(seconds)
    yield "late"


@operation("probe.gap", streams=True)
def gap(count: int, then_wait: float, *, cancel: threading.Event):
    """Yields 0..count-1 at once, then falls silent for ``then_wait`` s (a model that stalls mid-reply)."""
    yield from range(count)
    cancel.wait(then_wait)


class SilentLLM:
    """An LLM that never answers (until cancelled, or 10 s): a hung model or a lost worker."""

    name = PROBE_LLM

    def stream(self, messages, cancel: threading.Event):
        cancel.wait(10)
        return
        yield  # a generator


registry.BUILDERS["llm"][PROBE_LLM] = SilentLLM


@operation("probe.stamps", streams=True)
def stamps(count: int, delay: float, *, cancel: threading.Event):
    """Yields the wall time each item leaves the producer (benchmarks/backends.py: delivery latency)."""
    for _ in range(count):
        if cancel.wait(delay) if delay else cancel.is_set():
            return
        yield time.time()
