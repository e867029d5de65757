"""The dispatch seam: bounded admission, FIFO order, timeouts and streamed results."""
import asyncio
import threading
import time

import pytest

from voice.conf import ServiceLimits
from voice.workers import LocalService, ServiceBusy, ServiceTimeout


def service(max_concurrent=1, queue_size=2, timeout=5.0, first_token_timeout=None):
    return LocalService(ServiceLimits("test", max_concurrent, queue_size, timeout, 1, first_token_timeout))


async def test_calls_beyond_the_queue_are_refused_at_once():
    svc = service(max_concurrent=1, queue_size=2)
    release = threading.Event()
    calls = [asyncio.create_task(svc.call(release.wait)) for _ in range(3)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(ServiceBusy):
        await svc.call(time.sleep, 0)
    assert time.monotonic() - started < 0.05
    release.set()
    await asyncio.gather(*calls)
    stats = svc.stats()
    assert stats["rejected"] == 1 and stats["completed"] == 3 and stats["active"] == 0 and stats["queued"] == 0


async def test_waiting_calls_run_in_arrival_order():
    svc = service(max_concurrent=1, queue_size=10)
    order = []
    await asyncio.gather(*(svc.call(lambda i=i: (time.sleep(0.01), order.append(i))) for i in range(6)))
    assert order == list(range(6))


async def test_a_slow_call_times_out_and_is_counted():
    svc = service(timeout=0.1)
    with pytest.raises(ServiceTimeout):
        await svc.call(time.sleep, 0.5)
    assert svc.stats()["timed_out"] == 1


async def test_a_stream_yields_items_and_stops_its_producer_when_abandoned():
    svc = service()
    produced = []
    cancel = threading.Event()

    def numbers(cancel):
        for i in range(1000):
            if cancel.is_set():
                return
            produced.append(i)
            time.sleep(0.001)
            yield i

    got = []
    async for item in svc.stream(numbers, cancel, cancel=cancel):
        got.append(item)
        if len(got) == 5:
            break
    await asyncio.sleep(0.1)
    assert got == [0, 1, 2, 3, 4]
    assert cancel.is_set() and len(produced) < 100
    assert svc.stats()["active"] == 0


async def test_a_stream_error_reaches_the_consumer():
    svc = service()

    def broken():
        yield "first"
        raise RuntimeError("model fell over")

    got = []
    with pytest.raises(RuntimeError, match="fell over"):
        async for item in svc.stream(broken):
            got.append(item)
    assert got == ["first"]


async def test_a_stream_whose_first_item_is_late_times_out():
    svc = service(first_token_timeout=0.1)

    def sleepy():
        time.sleep(0.5)
        yield "late"

    with pytest.raises(ServiceTimeout):
        async for _ in svc.stream(sleepy):
            pass
