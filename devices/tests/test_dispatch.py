"""The consumer's message loop (devices/dispatch.py) without sockets: serial dispatch across
sources, each source's order kept, back-pressure, and the way it ends."""
import asyncio

import pytest
from channels.exceptions import StopConsumer

from devices.dispatch import dispatch_each


def source_of(messages, reads):
    queue = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)

    async def receive():
        reads.append(len(reads))
        return await queue.get()

    return receive, queue


async def test_messages_of_two_sources_are_dispatched_one_at_a_time_each_source_in_order():
    socket_reads, layer_reads = [], []
    socket, _ = source_of([{"n": i, "src": "socket"} for i in range(20)] + [{"stop": True}], socket_reads)
    layer, _ = source_of([{"n": i, "src": "layer"} for i in range(5)], layer_reads)
    running, seen, overlaps = 0, [], 0

    async def dispatch(message):
        nonlocal running, overlaps
        if message.get("stop"):
            raise StopConsumer
        running += 1
        overlaps += running > 1
        await asyncio.sleep(0.001 if message["src"] == "layer" else 0)  # a handler that awaits
        seen.append((message["src"], message["n"]))
        running -= 1

    with pytest.raises(StopConsumer):
        await dispatch_each([socket, layer], dispatch)
    assert overlaps == 0
    assert [n for src, n in seen if src == "socket"] == list(range(20))
    assert [n for src, n in seen if src == "layer"] == [n for n in range(5) if ("layer", n) in seen]


async def test_a_source_is_not_read_again_until_its_message_is_dispatched():
    reads = []
    socket, queue = source_of([{"n": 0}, {"n": 1}], reads)
    release = asyncio.Event()

    async def dispatch(message):
        await release.wait()
        raise StopConsumer

    loop_task = asyncio.ensure_future(dispatch_each([socket], dispatch))
    await asyncio.sleep(0.05)
    assert len(reads) == 1 and queue.qsize() == 1  # the second message waits in the socket's queue
    release.set()
    with pytest.raises(StopConsumer):
        await loop_task


async def test_a_failing_dispatch_ends_the_loop_with_its_error_and_stops_every_source():
    socket, _ = source_of([{"n": 0}], [])
    never = asyncio.Event()
    layer_cancelled = asyncio.Event()

    async def layer():
        try:
            await never.wait()
        finally:
            layer_cancelled.set()

    async def dispatch(message):
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await dispatch_each([socket, layer], dispatch)
    assert layer_cancelled.is_set()


async def test_cancelling_the_loop_stops_every_source():
    stopped = []

    def waiting(name):
        async def receive():
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append(name)
        return receive

    async def dispatch(message):
        pass

    task = asyncio.ensure_future(dispatch_each([waiting("socket"), waiting("layer")], dispatch))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(stopped) == ["layer", "socket"]


async def test_a_source_that_loses_its_cancellation_is_cancelled_again_and_the_loop_ends():
    """What Python 3.11's ``asyncio.wait_for`` does when its inner call completes in the step the
    cancel arrives (redis-py wraps each socket write in one): the cancel is swallowed and the
    receive goes on waiting. Before, the consumer then never ended."""
    socket, _ = source_of([{"stop": True}], [])
    swallowed, stopped = [], asyncio.Event()

    async def layer():
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if not swallowed:
                    swallowed.append(True)
                    asyncio.current_task().uncancel()
                    continue  # as wait_for returning a result instead of raising
                stopped.set()
                raise

    async def dispatch(message):
        raise StopConsumer

    with pytest.raises(StopConsumer):
        await asyncio.wait_for(dispatch_each([socket, layer], dispatch), 2)
    assert swallowed and stopped.is_set()


async def test_stop_all_gives_up_on_a_task_that_never_stops_and_says_so(monkeypatch, caplog):
    from devices import dispatch as module

    monkeypatch.setattr(module, "RECANCEL_FOR", 0.2)

    obeying = False

    async def stubborn():
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                if obeying:
                    raise

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    await module.stop_all([task])
    assert not task.done() and "did not stop" in caplog.text
    obeying = True
    await module.stop_all([task])
    assert task.cancelled()
